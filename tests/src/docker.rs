//! Helpers for the Docker end-to-end tests: the real engine, a tiny busybox image built
//! locally (no registry), volumes and listings that check files byte for byte with their
//! mode, owner and mtime.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The image the tests run their containers from: Debian's busybox-static in an imported
/// rootfs.
pub const IMAGE: &str = "drkit-test-busybox";

/// Fail (never skip) when the harness did not find the engine.
pub fn require_docker() {
    crate::required_env("DRKIT_TEST_DOCKER");
}

/// Run `docker ARGS`, returning its output (not checked).
pub fn docker_out(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Run `docker ARGS` and require success; returns stdout.
#[track_caller]
pub fn docker(args: &[&str]) -> String {
    let out = docker_out(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Build the test image once (idempotent): `/bin/busybox` of Debian's busybox-static, with
/// its applets linked, imported with `docker import`.
pub fn ensure_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_docker();
        // Test processes run side by side (nextest): one builds the image, the others wait.
        let lock = std::fs::File::create(std::env::temp_dir().join("drkit-test-image.lock"))
            .expect("create the image lock file");
        lock.lock().expect("lock the image lock file");
        if docker_out(&["image", "inspect", IMAGE]).status.success() {
            return;
        }
        let busybox = std::path::Path::new("/bin/busybox");
        if !busybox.exists() {
            // Debian's busybox-static; apt-get update once when the package list is stale.
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-q", "busybox-static"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install() {
                let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
                install();
            }
            assert!(
                busybox.exists(),
                "/bin/busybox is missing and `apt-get install busybox-static` failed: install it by hand"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        for applet in [
            "sh", "sleep", "mkdir", "echo", "cat", "ls", "dd", "ln", "chmod", "chown", "touch",
            "true", "find", "head", "seq", "printf", "test", "[", "stat", "md5sum", "sort", "rm",
            "readlink", "xargs", "wc",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let mut tar = Command::new("tar")
            .args(["-C", dir.path().to_str().unwrap(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let st = Command::new("docker")
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .stdout(Stdio::null())
            .status()
            .expect("docker import");
        assert!(
            tar.wait().is_ok_and(|s| s.success()),
            "tar of the busybox rootfs failed"
        );
        assert!(st.success(), "docker import of the busybox rootfs failed");
    });
}

/// A unique name for this test process: `drkit-t<pid>-<n>-<what>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "drkitt{}x{}{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Run a busybox shell script with `volume` mounted at /data.
#[track_caller]
pub fn in_volume(volume: &str, script: &str) -> String {
    ensure_image();
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{volume}:/data"),
        IMAGE,
        "sh",
        "-c",
        script,
    ])
}

/// Every entry of a volume, one per line: path, type, mode, uid, gid, mtime, size, link
/// count, then the md5 of a file's content or a symlink's target.
pub fn listing(volume: &str) -> String {
    in_volume(
        volume,
        r#"cd /data && find . | sort | while read -r f; do stat -c "%n|%F|%a|%u|%g|%Y|%s|%h" "$f"; if [ -L "$f" ]; then readlink "$f"; elif [ -f "$f" ]; then md5sum < "$f"; fi; done"#,
    )
}

/// Fill a volume with a bit of everything a restore must reproduce.
pub fn populate(volume: &str) {
    in_volume(
        volume,
        r#"set -e; cd /data
mkdir -p deep/er/still "with space" "ünïcode"
echo hello > a.txt; chown 1234:567 a.txt; chmod 640 a.txt
: > empty
dd if=/dev/urandom of=deep/er/random.bin bs=1k count=1500 2>/dev/null
echo x > "with space/f i l e"; echo y > "ünïcode/ß.txt"
ln -s a.txt link; ln -s ../../a.txt deep/er/uplink; ln a.txt hard
p=deep/er/still/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.txt
echo long > $p
chmod 4755 deep/er/random.bin; chmod 700 deep; chown 999:999 deep/er
touch -d "2020-02-03 04:05:06" a.txt deep/er/random.bin "with space"
chown 70:70 /data; chmod 750 /data; touch -d "2019-01-01 00:00:00" /data"#,
    );
}

/// Removes what a test created, also when it fails.
#[derive(Default)]
pub struct Cleanup {
    /// Volumes to remove.
    pub volumes: Vec<String>,
    /// Containers to remove.
    pub containers: Vec<String>,
    /// Compose projects whose containers, volumes and networks are removed (by label).
    pub projects: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.projects {
            let label = format!("label=com.docker.compose.project={p}");
            let ids = |args: &[&str]| -> Vec<String> {
                String::from_utf8_lossy(&docker_out(args).stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            };
            for c in ids(&["ps", "-aq", "--filter", &label]) {
                let _ = docker_out(&["rm", "-f", &c]);
            }
            for v in ids(&["volume", "ls", "-q", "--filter", &label]) {
                let _ = docker_out(&["volume", "rm", "-f", &v]);
            }
            for n in ids(&["network", "ls", "-q", "--filter", &label]) {
                let _ = docker_out(&["network", "rm", &n]);
            }
        }
        for c in &self.containers {
            let _ = docker_out(&["rm", "-f", c]);
        }
        for v in &self.volumes {
            // A helper of an interrupted drkit may hold the volume for a moment.
            for _ in 0..20 {
                let filter = format!("volume={v}");
                let helpers = docker_out(&[
                    "ps",
                    "-aq",
                    "--filter",
                    "label=drkit.helper",
                    "--filter",
                    &filter,
                ]);
                for h in String::from_utf8_lossy(&helpers.stdout).split_whitespace() {
                    let _ = docker_out(&["rm", "-f", h]);
                }
                let out = docker_out(&["volume", "rm", "-f", v]);
                if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("in use")
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
    }
}

/// Whether a volume exists.
pub fn volume_exists(name: &str) -> bool {
    docker_out(&["volume", "inspect", name]).status.success()
}

/// Whether a container is running.
pub fn running(name: &str) -> bool {
    docker_out(&["inspect", "-f", "{{.State.Running}}", name])
        .stdout
        .starts_with(b"true")
}

/// The compose command lines present on this machine: `docker-compose` (v1) and/or
/// `docker compose` (v2).
pub fn compose_flavours() -> Vec<Vec<&'static str>> {
    let mut out = Vec::new();
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        out.push(vec!["docker-compose"]);
    }
    if docker_out(&["compose", "version"]).status.success() {
        out.push(vec!["docker", "compose"]);
    }
    assert!(
        !out.is_empty(),
        "neither docker-compose nor docker compose is installed"
    );
    out
}

/// A `drkit.toml` with one local storage at `store` plus `jobs` (TOML text).
pub fn config(store: &std::path::Path, jobs: &str) -> String {
    format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n{jobs}",
        store.display()
    )
}

/// Replays a crafted archive as if it were a volume dump, to store it as a backup.
pub struct Crafted(pub Vec<u8>);

#[async_trait::async_trait]
impl drkit_core::Source for Crafted {
    fn driver(&self) -> &'static str {
        "docker-volume"
    }
    fn extension(&self) -> &'static str {
        "tar"
    }
    fn describe(&self) -> String {
        "crafted archive".into()
    }
    async fn dump(&self) -> drkit_core::Result<drkit_core::Dump> {
        use futures::FutureExt;
        Ok(drkit_core::Dump {
            reader: Box::new(std::io::Cursor::new(self.0.clone())),
            finish: async { Ok(drkit_core::DumpSummary::default()) }.boxed(),
        })
    }
    async fn plan_restore(
        &self,
        _: &drkit_core::Manifest,
        _: &drkit_core::RestoreOptions,
    ) -> drkit_core::Result<drkit_core::RestoreReport> {
        unreachable!("only dumped")
    }
    async fn restore(
        &self,
        _: drkit_core::BoxRead,
        _: &drkit_core::Manifest,
        _: &drkit_core::RestoreOptions,
    ) -> drkit_core::Result<drkit_core::RestoreReport> {
        unreachable!("only dumped")
    }
}
