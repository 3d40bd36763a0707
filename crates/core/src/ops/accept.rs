//! `drkit accept`: mark a suspect backup as good after a deliberate purge, by writing an
//! accept record beside it (never by rewriting its manifest: object-locked buckets forbid
//! that).

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

use crate::catalog::{self, Acceptance, State};
use crate::pipeline::Target;
use crate::signing::{Record, Signer, Trust};
use crate::{Error, ErrorKind, Result};

/// What happened on one storage.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptOutcome {
    /// The storage.
    pub storage: String,
    /// Whether the record is there now.
    pub accepted: bool,
    /// What happened, in words.
    pub detail: String,
}

/// Accept backup `id` of `job` on every storage that holds it. Fails when no storage holds
/// it as a suspect backup; a broken copy is an integrity error.
#[allow(clippy::too_many_arguments)]
pub async fn accept(
    job: &str,
    id: &str,
    targets: &[Target],
    trust: &Trust,
    signer: Option<&Signer>,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Vec<AcceptOutcome>> {
    check_request(job, trust, signer, reason)?;
    let record = Acceptance {
        job: job.to_string(),
        backup_id: id.to_string(),
        accepted_at: now.trunc_subsecs(3),
        by: by.to_string(),
        host: crate::hostname(),
        reason: reason.trim().to_string(),
    };
    let json = record.to_json();
    let key = Acceptance::key_for(job, id);
    let mut out = Vec::new();
    let mut worst: Option<Error> = None;
    for t in targets {
        let (outcome, error) = accept_on(t, job, id, trust, signer, &key, &json).await;
        out.push(outcome);
        if let Some(e) = error {
            worst.get_or_insert(e);
        }
    }
    if let Some(e) = worst {
        return Err(e);
    }
    if !out.iter().any(|o| o.accepted) {
        let why: Vec<String> = out
            .iter()
            .map(|o| format!("{}: {}", o.storage, o.detail))
            .collect();
        return Err(Error::not_found(format!(
            "backup {job}/{id} was not accepted anywhere: {}",
            why.join("; ")
        )));
    }
    Ok(out)
}

/// Refuse an accept without a reason, or one whose unsigned record the job would ignore.
fn check_request(job: &str, trust: &Trust, signer: Option<&Signer>, reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(Error::config(
            "say why the backup is right with --reason (it is kept in the accept record)",
        ));
    }
    if !trust.is_blind() && signer.is_none() {
        return Err(Error::config(format!(
            "job {job} checks signatures but this host has no signing key_file: an unsigned accept record would be ignored"
        )));
    }
    Ok(())
}

/// Accept the backup on one storage: what happened there, and the error that makes the
/// whole accept fail (a missing backup is not one).
async fn accept_on(
    t: &Target,
    job: &str,
    id: &str,
    trust: &Trust,
    signer: Option<&Signer>,
    key: &str,
    json: &[u8],
) -> (AcceptOutcome, Option<Error>) {
    let storage = t.storage.as_ref();
    let entry = match catalog::load(storage, job, id, trust).await {
        Ok(e) => e,
        Err(e) => {
            let outcome = AcceptOutcome {
                storage: t.name.clone(),
                accepted: false,
                detail: e.to_string(),
            };
            let error = (e.kind() != ErrorKind::NotFound).then_some(e);
            return (outcome, error);
        }
    };
    let mut error = None;
    let detail = match entry.state() {
        State::Good => "not suspect: nothing to accept".to_string(),
        State::Accepted => "already accepted".to_string(),
        State::Suspect => match write_record(storage, job, signer, key, json).await {
            Ok(()) => {
                let outcome = AcceptOutcome {
                    storage: t.name.clone(),
                    accepted: true,
                    detail: format!(
                        "accepted (was suspect: {})",
                        entry.manifest.suspect_reasons().join("; ")
                    ),
                };
                return (outcome, None);
            }
            Err(e) => {
                let e = e.context(format!("storage {}: writing {key}", t.name));
                let text = e.to_string();
                error = Some(e);
                text
            }
        },
    };
    let outcome = AcceptOutcome {
        storage: t.name.clone(),
        accepted: entry.state() == State::Accepted,
        detail,
    };
    (outcome, error)
}

/// Write the accept record at `key`, after its signature when there is a signer, under the
/// job's lock (refused, or waited for, while another run writes the job).
async fn write_record(
    storage: &dyn crate::Storage,
    job: &str,
    signer: Option<&Signer>,
    key: &str,
    json: &[u8],
) -> Result<()> {
    let lock = storage.lock(job).await?;
    let written = write_signed(storage, signer, key, json).await;
    if let Err(e) = lock.release().await {
        tracing::warn!(event = "lock.release_failed", job, "{e}");
    }
    written
}

async fn write_signed(
    storage: &dyn crate::Storage,
    signer: Option<&Signer>,
    key: &str,
    json: &[u8],
) -> Result<()> {
    if let Some(s) = signer {
        storage
            .put(
                &crate::layout::signature_key(key),
                s.sign(Record::Accept, json),
            )
            .await?;
    }
    storage.put(key, json.to_vec()).await
}

/// Who is running drkit, for accept records: `$SUDO_USER`, `$USER`, `$LOGNAME`, else the uid.
pub fn current_user() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1).map(|u| format!("uid {u}")))
                })
                .unwrap_or_else(|| "unknown".into())
        })
}
