//! Fuzz target: the manifest reader (`Manifest::from_json`) and the catalog's check that a
//! manifest belongs to the folder it was found in (`catalog::check_manifest`), then what the
//! catalog and the restore read from an accepted manifest.
#![no_main]

use drkit_core::catalog::{self, Acceptance};
use drkit_core::manifest::{format_time, Manifest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = "db/20260102T030405Z-abcdef/manifest.json";
    let _ = catalog::check_manifest(data, key, "db", "20260102T030405Z-abcdef");
    let _ = serde_json::from_slice::<Acceptance>(data);
    let Ok(m) = Manifest::from_json(data, key) else {
        return;
    };
    // The folder the manifest names: the check passes the job and id, then looks at the key.
    let _ = catalog::check_manifest(data, &m.key(), &m.job, &m.id);
    let _ = catalog::is_backup_id(&m.id);
    let _ = (m.folder(), m.is_empty_source(), m.suspect_reasons());
    let _ = (format_time(&m.started_at), format_time(&m.finished_at));
    let _ = catalog::newest_first(&m, &m);
    // What drkit writes back (a copy to another storage) must serialize.
    let _ = Manifest::from_json(&m.to_json(), key);
});
