//! The fleet view: `drkit status --all-jobs` lists every job found in a shared storage,
//! whether or not the local config names it, with the host of its newest backup.

use drkit_tests::Scratch;
use rusqlite::Connection;

fn make_db(path: &std::path::Path, rows: i64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t(x INTEGER);").unwrap();
    c.execute(
        &format!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {rows}) INSERT INTO t SELECT x FROM c"),
        [],
    )
    .unwrap();
}

/// Two hosts' configs, each with its own job, writing one storage folder.
fn two_hosts(s: &Scratch) -> (String, String) {
    let store = s.path("store").display().to_string();
    let mut configs = Vec::new();
    for job in ["alpha", "beta"] {
        make_db(&s.path(&format!("{job}.db")), 500);
        let text = format!(
            "[storage.shared]\ntype = \"local\"\npath = \"{store}\"\n\n[job.{job}]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = \"shared\"\n",
            s.path(&format!("{job}.db")).display()
        );
        let path = s.path(&format!("{job}.toml"));
        std::fs::write(&path, text).unwrap();
        configs.push(path.display().to_string());
    }
    (configs[0].clone(), configs[1].clone())
}

#[test]
fn all_jobs_lists_what_other_hosts_wrote_and_judges_it() {
    let s = Scratch::new();
    let (alpha, beta) = two_hosts(&s);
    s.drkit(&["--config", &alpha, "backup"]).expect_code(0);
    s.drkit(&["--config", &beta, "backup"]).expect_code(0);

    // Plain status knows only its own job; the fleet view sees both.
    let own = s.drkit(&["--config", &alpha, "--json", "status"]);
    own.expect_code(0);
    let own = own.json();
    assert_eq!(own.as_array().unwrap().len(), 1, "{own}");
    let all = s.drkit(&["--config", &alpha, "--json", "status", "--all-jobs"]);
    all.expect_code(0);
    let rows = all.json();
    let jobs: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["alpha", "beta"], "{rows}");
    let host = drkit_core::hostname();
    for r in rows.as_array().unwrap() {
        assert_eq!(r["state"], "ok", "{r}");
        assert_eq!(r["newest"]["host"], host.as_str(), "{r}");
        assert_eq!(r["backups"], 1, "{r}");
    }
    assert!(rows[1]["detail"]
        .as_str()
        .unwrap()
        .contains("not in this config"));
    let text = s.drkit(&["--config", &alpha, "status", "--all-jobs"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("HOST") && text.stdout.contains("beta"),
        "{}",
        text.stdout
    );

    // A folder whose name is no job name (hostile, or junk) is not taken for one.
    let alpha_backup = std::fs::read_dir(s.path("store/alpha"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("manifest.json").exists())
        .unwrap();
    let id = alpha_backup
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for bad in ["bad name", ".hidden"] {
        let dir = s.path(&format!("store/{bad}/{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            alpha_backup.join("manifest.json"),
            dir.join("manifest.json"),
        )
        .unwrap();
    }
    let all = s.drkit(&["--config", &alpha, "--json", "status", "--all-jobs"]);
    all.expect_code(0);
    assert_eq!(all.json().as_array().unwrap().len(), 2, "{}", all.stdout);

    // Stale anywhere in the fleet: exit 5, naming the job.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let stale = s.drkit(&[
        "--config",
        &alpha,
        "status",
        "--all-jobs",
        "--max-age",
        "1s",
    ]);
    stale.expect_code(5);
    assert!(stale.stdout.contains("STALE"), "{}", stale.stdout);
}
