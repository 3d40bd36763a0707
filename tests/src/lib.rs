//! Helpers shared by the end-to-end tests: run the real `drkit` binary in a scratch folder.

pub mod fault_proxy;
pub mod mongodb;
pub mod postgres;
pub mod prometheus;
pub mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The `drkit` binary of this workspace, built on first use.
pub fn drkit_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // tests run from target/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let bin = profile_dir.join("drkit");
        // scripts/test.sh builds the binary once (`cargo build -p drkit`) before the tests and
        // says so: under nextest every test is its own process and would run cargo again.
        if std::env::var_os("DRKIT_TEST_BIN_BUILT").is_some_and(|v| v == "1") && bin.exists() {
            return bin;
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-q", "-p", "drkit"]);
        if release {
            cmd.arg("--release");
        }
        // The variables cargo sets for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR...) must
        // not reach the inner cargo: build scripts that watch them (ring's) would see them
        // change, and every dependency above them would be rebuilt on each run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
                || matches!(
                    key.as_str(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&key);
            }
        }
        // Always rebuild: cheap when up to date, and never tests a stale binary.
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p drkit");
        assert!(status.success(), "cargo build -p drkit failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// The result of one `drkit` run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The result of a finished `drkit` process.
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// `(id, state, reason)` of each entry of a `list --json` output, in its order.
    pub fn list_entries(&self) -> Vec<(String, String, String)> {
        self.json()
            .as_array()
            .expect("list --json prints an array")
            .iter()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (text("id"), text("state"), text("reason"))
            })
            .collect()
    }

    /// Assert the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Assert a failure printed exactly one clear `error:` line and nothing like a panic.
    #[track_caller]
    pub fn expect_one_line_error(&self, needle: &str) -> &Run {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "want one error line, got stderr:\n{}",
            self.stderr
        );
        assert!(
            errors[0].contains(needle),
            "error line {:?} does not mention {needle:?}",
            errors[0]
        );
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr shows a panic:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// A scratch folder with a `drkit.toml`, where `drkit` runs.
pub struct Scratch {
    /// The temp dir (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// A new empty scratch folder.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A path inside the scratch folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write `drkit.toml`.
    pub fn config(&self, text: &str) {
        std::fs::write(self.path("drkit.toml"), text).expect("write drkit.toml");
    }

    /// Run `drkit ARGS` in the folder and wait.
    pub fn drkit(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run drkit"))
    }

    /// A `drkit ARGS` command in the folder, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(drkit_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("DRKIT_CONFIG")
            .stdin(Stdio::null());
        cmd
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// A required environment variable set by `scripts/test.sh`; panics (fails the test) when it
/// is missing, so a missing server is never a skipped test.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with `bash scripts/test.sh`, which starts the servers")
    })
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Docker engine helpers.
pub mod docker;
pub mod storage;

/// An Ed25519 key in PKCS#8 PEM (as the docs say to make one) and its public half in base64.
pub fn signing_keypair(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("signing.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl genpkey failed");
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl pkey");
    assert!(der.status.success());
    let raw = &der.stdout[der.stdout.len() - 32..];
    let b64 = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(raw)?;
            c.wait_with_output()
        })
        .expect("base64");
    (
        key,
        String::from_utf8(b64.stdout).unwrap().trim().to_string(),
    )
}
