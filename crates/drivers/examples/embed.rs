//! Embedding drkit: back up a SQLite database into a local folder, verify it, and restore it,
//! from Rust code.
//!
//! ```sh
//! cargo run -p drkit-drivers --example embed -- /path/to/app.db /var/backups/drkit /tmp/restored.db
//! ```

use drkit_core::pipeline::{self, BackupOptions, Target};
use drkit_core::{RestoreOptions, Result};
use drkit_drivers::source::sqlite::SqliteSource;
use drkit_drivers::storage::local::LocalStorage;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, folder, restore_to] = args.as_slice() else {
        eprintln!("usage: embed DATABASE BACKUP_FOLDER RESTORE_TO");
        std::process::exit(2);
    };
    let source = SqliteSource::new(db);
    let storage = Arc::new(LocalStorage::new(folder));
    let targets = [Target {
        name: "local".into(),
        storage: storage.clone(),
    }];

    let outcome = pipeline::backup(
        "app",
        &source,
        &targets,
        &BackupOptions::default(),
        pipeline::no_progress(),
    )
    .await?;
    let manifest = outcome.manifest;
    println!(
        "backup {} ({} bytes stored)",
        manifest.id, manifest.data.stored_size
    );

    pipeline::verify(
        storage.as_ref(),
        &manifest,
        Some(&source),
        pipeline::no_progress(),
    )
    .await?;
    let opts = RestoreOptions {
        to: Some(restore_to.clone()),
        ..Default::default()
    };
    let restored = pipeline::restore(
        storage.as_ref(),
        &manifest,
        &source,
        &opts,
        false,
        pipeline::no_progress(),
    )
    .await?;
    println!("restored to {}", restored.report.destination);
    Ok(())
}
