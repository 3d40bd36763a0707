//! End to end: the embedding example (crates/app/examples/guard_before_down.rs), compiled
//! here from its own source, run against the machine's Docker engine. A compose project with
//! a named volume holding data and no backup: the example backs it up first, verified, and
//! then says the `down -v` may run; a second check finds it protected and backs up nothing.

#[allow(dead_code)] // its `main` is the example binary's; the test calls `run`.
#[path = "../../crates/app/examples/guard_before_down.rs"]
mod example;

use std::time::Duration;

use drkit_tests::docker::{compose_flavours, docker, in_volume, unique, Cleanup, IMAGE};
use drkit_tests::Scratch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_backs_up_a_compose_volume_before_down_v() {
    drkit_tests::docker::require_docker();
    drkit_tests::docker::ensure_image();
    let flavour = compose_flavours().remove(0);
    let mut clean = Cleanup::default();
    let s = Scratch::new();
    let project = unique("embed");
    clean.projects.push(project.clone());
    let dir = s.path("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: \"3\"\nservices:\n  app:\n    image: {IMAGE}\n    network_mode: none\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    volumes:\n      - data:/data\nvolumes:\n  data: {{}}\n"
        ),
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let out = std::process::Command::new(flavour[0])
            .args(&flavour[1..])
            .args(["-p", &project])
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run compose");
        assert!(
            out.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tokio::task::block_in_place(|| compose(&["up", "-d"]));
    let volume = format!("{project}_data");
    tokio::task::block_in_place(|| {
        in_volume(
            &volume,
            "echo booking-NL-1 > /data/bookings; dd if=/dev/urandom of=/data/blob bs=1k count=64 2>/dev/null",
        )
    });
    let config = s.path("drkit.toml");
    std::fs::write(
        &config,
        drkit_tests::docker::config(
            &s.path("store"),
            &format!("[job.shop-data]\nsource = {{ type = \"docker-volume\", volume = \"{volume}\" }}\nstorage = [\"local\"]\n"),
        ),
    )
    .unwrap();
    let mut argv: Vec<String> = flavour.iter().map(|s| s.to_string()).collect();
    argv.extend(["-p", &project, "down", "-v"].map(String::from));

    // No backup yet: the example backs the volume up first, and then it is protected.
    let r = example::run(&config, Duration::from_secs(3600), &argv, &dir)
        .await
        .unwrap();
    assert_eq!(r.unprotected_before, vec![volume.clone()]);
    assert_eq!(r.backed_up.len(), 1, "one backup first");
    assert_eq!(r.backed_up[0].0, volume);
    assert_eq!(r.backed_up[0].1, "shop-data");
    assert!(r.after.allowed(), "protected after the backup");
    let id = r.backed_up[0].2.clone();

    // The backup is real: listed and verified through the same handle.
    let drkit = drkit_app::Drkit::open(&config, &[]).unwrap();
    let listed = drkit.list("shop-data").await.unwrap();
    let backups = &listed[0].listing.as_ref().unwrap().backups;
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].manifest.id, id);
    assert!(backups[0].manifest.data.raw_size > 64 * 1024);
    let which = drkit_core::ops::verify::Which::Id(id.clone());
    let verified = drkit
        .verify("shop-data", &which, false, &|_| {
            drkit_core::pipeline::no_progress()
        })
        .await
        .unwrap();
    assert!(verified[0].error().is_none(), "{:?}", verified[0].error());

    // Checked again: protected, nothing backed up.
    let r = example::run(&config, Duration::from_secs(3600), &argv, &dir)
        .await
        .unwrap();
    assert!(r.unprotected_before.is_empty());
    assert!(r.backed_up.is_empty());
    assert!(r.after.allowed());

    // A command that destroys no volume is allowed with nothing to check.
    let ps: Vec<String> = ["docker", "ps"].map(String::from).to_vec();
    let r = example::run(&config, Duration::from_secs(3600), &ps, &dir)
        .await
        .unwrap();
    assert!(r.after.allowed() && r.after.volumes.is_empty());
    // The volume was never touched by the checks.
    assert!(docker(&["volume", "ls", "-q"]).lines().any(|l| l == volume));
}
