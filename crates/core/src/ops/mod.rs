//! Use cases: the rules behind each command, for the CLI and for programs that embed drkit.
//! Each takes the job's storages ([`Target`]s), what it trusts, and `now` where time matters,
//! and returns a typed report; none prints.

pub mod accept;
pub mod daemon;
pub mod drill;
pub mod events;
pub mod health;
pub mod prune;
pub mod rekey;
pub mod restore;
pub mod verify;

use crate::catalog::{self, Listing};
use crate::pipeline::Target;
use crate::signing::Trust;
use crate::Result;

/// The listing of a job on one of its storages, or why that storage could not be read.
pub struct StorageListing {
    /// The storage's name in the config.
    pub storage: String,
    /// The listing, or the storage's error (one unreachable storage does not hide the others).
    pub listing: Result<Listing>,
}

/// Read the job's backups on each of its storages, in the job's order.
pub async fn list_job(job: &str, targets: &[Target], trust: &Trust) -> Vec<StorageListing> {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        out.push(StorageListing {
            storage: t.name.clone(),
            listing: catalog::scan(t.storage.as_ref(), job, trust).await,
        });
    }
    out
}

/// Serialize an error as `{"kind": "...", "message": "..."}` (reports' JSON).
pub(crate) fn error_json<S: serde::Serializer>(
    e: &crate::Error,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Error", 2)?;
    st.serialize_field("kind", &e.kind())?;
    st.serialize_field("message", &e.to_string())?;
    st.end()
}
