//! The deployment examples of docs/deploy.md, checked with the tools their platforms use:
//! systemd's own `systemd-analyze verify` for the units, the Kubernetes schemas
//! (`kubernetes-validate`, PyPI, installed by scripts/servers.sh) for the CronJobs, and drkit's
//! config loader for the config they carry. A tool that cannot run fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/deploy")
        .join(file)
}

/// The Python scripts/servers.sh installs into (it exports DRKIT_PYTHON), else python3.
fn python() -> String {
    std::env::var("DRKIT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Run `systemd-analyze verify` on units; their binary path is the one under test.
fn verify_units(dir: &Path, units: &[(&str, String)]) -> (bool, String) {
    let mut paths = Vec::new();
    for (name, text) in units {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze runs (Debian's systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // verify reports bad values as warnings with exit 0: any line about our units fails.
    let clean = out.status.success() && !stderr.lines().any(|l| l.contains(dir.to_str().unwrap()));
    (clean, stderr)
}

#[test]
fn systemd_units_verify_and_a_broken_one_does_not() {
    let bin = drkit_tests::drkit_bin().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let units: Vec<(&str, String)> = [
        "drkit-backup.service",
        "drkit-backup.timer",
        "drkit-daemon.service",
    ]
    .iter()
    .map(|n| {
        let text = std::fs::read_to_string(deploy(n)).unwrap();
        assert!(
            text.contains("/usr/local/bin/drkit") || n.ends_with(".timer"),
            "{n}"
        );
        (*n, text.replace("/usr/local/bin/drkit", &bin))
    })
    .collect();
    let (clean, stderr) = verify_units(dir.path(), &units);
    assert!(clean, "{stderr}");
    let timer = &units[1].1;
    assert!(timer.contains("Persistent=true"), "{timer}");
    // The check is real: a unit with a bad value is caught.
    let bad = tempfile::tempdir().unwrap();
    let broken = units[0].1.replace("Type=oneshot", "Type=bogus");
    let (clean, _) = verify_units(bad.path(), &[("drkit-backup.service", broken)]);
    assert!(!clean, "a broken unit passed systemd-analyze verify");
}

#[test]
fn kubernetes_cronjobs_match_the_schemas_and_carry_a_valid_config() {
    let file = deploy("kubernetes-cronjob.yaml");
    let run = |path: &Path| {
        Command::new(python())
            .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
            .arg(path)
            .output()
            .expect("python3 runs")
    };
    let out = run(&file);
    assert!(
        out.status.success(),
        "kubernetes-validate (pip install kubernetes-validate; scripts/servers.sh does):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for want in [
        "concurrencyPolicy: Forbid",
        "startingDeadlineSeconds",
        "backoffLimit: 0",
        "name: drkit-drill",
    ] {
        assert!(text.contains(want), "{want}");
    }
    // The check is real: a misspelled field is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("concurrencyPolicy", "concurrencyPolcy")).unwrap();
    assert!(!run(&bad).status.success(), "a misspelled field passed");

    // The ConfigMap's drkit.toml loads and validates, its secrets coming from files.
    let toml: String = text
        .split("drkit.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let asked = std::cell::RefCell::new(Vec::new());
    let lookup = |name: &str| {
        asked.borrow_mut().push(name.to_string());
        name.starts_with("file:/run/secrets/drkit/")
            .then(|| "x".to_string())
    };
    let config = drkit_core::Config::parse(&toml, "configmap", &lookup).expect("the config parses");
    drkit_drivers::validate(&config).expect("the config validates");
    assert_eq!(config.job.len(), 1);
    assert!(
        asked.borrow().iter().all(|n| n.starts_with("file:")),
        "{:?}",
        asked.borrow()
    );
}

#[test]
fn the_cron_lines_name_their_config_and_run_drkit_commands() {
    let text = std::fs::read_to_string(deploy("crontab")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert!(lines.len() >= 3);
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let schedule = fields[..5].join(" ");
        drkit_core::schedule::Schedule::parse(&schedule).expect("a 5-field schedule");
        assert_eq!(fields[5], "/usr/local/bin/drkit", "{line}");
        assert!(
            line.contains("--config /etc/drkit/drkit.toml"),
            "cron has no DRKIT_CONFIG: {line}"
        );
        let args: Vec<&str> = fields[6..].to_vec();
        let cmd = *args.last().unwrap();
        assert!(
            ["backup", "prune", "drill", "status"].contains(&cmd),
            "{line}"
        );
    }
}
