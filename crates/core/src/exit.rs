//! The one exit policy: what a run of drkit ended as, and which exit code says it.
//!
//! Every command folds its typed reports into an [`Exit`] ([`Exit::worst`]); the binary's
//! `main` is the only place that turns it into a process exit code. The codes are a contract
//! (docs/cli.md, ARCHITECTURE.md): scripts and monitoring depend on them.

use crate::{Error, ErrorKind};

/// How a run ended, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Exit {
    /// Everything asked for was done (exit 0).
    #[default]
    Ok,
    /// Done, but a backup is missing, stale or suspect, or a drill found nothing to drill
    /// (exit 5): someone should look.
    Unhealthy,
    /// An operation failed: a storage, a source, a program (exit 1).
    Failed,
    /// The command line or the config is wrong (exit 2).
    Usage,
    /// A safety guard refused (exit 3).
    Refused,
    /// A checksum, signature, structure or count check failed (exit 4).
    Integrity,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::Integrity => 4,
            Exit::Unhealthy => 5,
        }
    }

    /// The worse of two: any failure outranks "unhealthy", and an integrity failure outranks
    /// every other, because it means data that cannot be trusted.
    #[must_use]
    pub fn worst(self, other: Exit) -> Exit {
        self.max(other)
    }

    /// Make `self` the worse of itself and `other`.
    pub fn note(&mut self, other: impl Into<Exit>) {
        *self = self.worst(other.into());
    }
}

impl From<ErrorKind> for Exit {
    fn from(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::Config => Exit::Usage,
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::Integrity => Exit::Integrity,
            ErrorKind::Source
            | ErrorKind::Storage
            | ErrorKind::NotFound
            | ErrorKind::ExternalCommand
            | ErrorKind::Cancelled => Exit::Failed,
        }
    }
}

impl From<&Error> for Exit {
    fn from(e: &Error) -> Exit {
        e.kind().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_order() {
        let table = [
            (ErrorKind::Config, 2),
            (ErrorKind::Refused, 3),
            (ErrorKind::Integrity, 4),
            (ErrorKind::Source, 1),
            (ErrorKind::Storage, 1),
            (ErrorKind::NotFound, 1),
            (ErrorKind::ExternalCommand, 1),
            (ErrorKind::Cancelled, 1),
        ];
        for (kind, code) in table {
            assert_eq!(Exit::from(kind).code(), code, "{kind:?}");
        }
        assert_eq!(Exit::Unhealthy.code(), 5);
        assert_eq!(Exit::Ok.code(), 0);
        // A failure outranks unhealthy (backup: 1 before 5); integrity outranks the rest.
        let worst = [
            (Exit::Ok, Exit::Unhealthy, Exit::Unhealthy),
            (Exit::Unhealthy, Exit::Failed, Exit::Failed),
            (Exit::Failed, Exit::Integrity, Exit::Integrity),
            (Exit::Integrity, Exit::Usage, Exit::Integrity),
            (Exit::Refused, Exit::Failed, Exit::Refused),
        ];
        for (a, b, want) in worst {
            assert_eq!(a.worst(b), want);
            assert_eq!(b.worst(a), want);
        }
        let mut e = Exit::Ok;
        e.note(ErrorKind::Storage);
        e.note(Exit::Unhealthy);
        assert_eq!(e, Exit::Failed);
    }
}
