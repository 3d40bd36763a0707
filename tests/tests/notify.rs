//! End to end: notifications (docs/monitoring.md) of SQLite backups into a local folder,
//! delivered to a local HTTP receiver: events and their fields, `on`, the HMAC signature,
//! templates, receivers that hang or fail, the dead-man switch (`type = "ping"`), a command
//! notifier, and `--log-format json`.

use std::path::Path;
use std::time::{Duration, Instant};

use drkit_tests::receiver::{Mode, Receiver, Request};
use drkit_tests::{Run, Scratch};
use hmac::{Hmac, Mac};

/// A scratch folder whose config has a local storage, the `notify` text (whole `[notify.*]`
/// tables) and a SQLite job `app` on `app.db` with the `job` lines (`notify = [...]`, ...),
/// then `tail` (subtables such as `[job.app.drill]`). `app.db` is not created.
fn setup(notify: &str, job: &str, tail: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n{notify}\n\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{job}\n\n{tail}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    s
}

/// A webhook notifier table.
fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!("[notify.{name}]\ntype = \"webhook\"\nurl = \"{url}\"\ntimeout = \"2s\"\n{extra}\n")
}

/// `rows` rows of ~400 bytes in table `t` of `db`.
fn fill(db: &Path, rows: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    c.execute(
        "INSERT INTO t(v) SELECT randomblob(400) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) SELECT i FROM n)",
        [rows as i64],
    )
    .unwrap();
}

fn keep_only(db: &Path, rows: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute("DELETE FROM t WHERE id > ?1", [rows as i64])
        .unwrap();
    c.execute_batch("VACUUM;").unwrap();
}

/// The id of the backup a `--json backup` wrote.
fn backup_id(r: &Run) -> String {
    r.json()[0]["manifest"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no manifest id in {}", r.stdout))
        .to_string()
}

/// The requests of a run that has ended: every delivery finished before drkit exited (the
/// receiver records a request before it answers), so a short grace is only for the thread.
fn delivered(r: &Receiver, at_least: usize) -> Vec<Request> {
    r.wait_for(at_least, Duration::from_secs(3))
}

fn describe(reqs: &[Request]) -> String {
    reqs.iter()
        .map(|q| format!("{} {} {:?}", q.method, q.path, q.body_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The fields every event has, whatever it is about (docs/monitoring.md, "Events").
#[track_caller]
fn assert_event_shape(e: &serde_json::Value, event: &str, operation: &str) {
    assert_eq!(e["event"], event, "{e}");
    assert_eq!(e["operation"], operation, "{e}");
    assert_eq!(e["job"], "app", "{e}");
    let host = e["host"].as_str().unwrap_or_else(|| panic!("host: {e}"));
    assert!(!host.is_empty(), "{e}");
    let msg = e["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message: {e}"));
    assert!(
        !msg.trim().is_empty() && !msg.contains('\n'),
        "message is not one line: {e}"
    );
    let time = e["time"].as_str().unwrap_or_else(|| panic!("time: {e}"));
    let t = chrono::DateTime::parse_from_rfc3339(time)
        .unwrap_or_else(|err| panic!("time {time:?} is not RFC 3339: {err}"));
    assert_eq!(t.offset().local_minus_utc(), 0, "time is not UTC: {time}");
    let age = chrono::Utc::now().signed_duration_since(t);
    assert!(
        age < chrono::Duration::minutes(5) && age > chrono::Duration::seconds(-5),
        "time {time} is not now"
    );
    assert_eq!(
        e["drkit_version"],
        env!("CARGO_PKG_VERSION"),
        "drkit_version: {e}"
    );
    assert!(e["figures"].is_object(), "figures is not an object: {e}");
    let obj = e.as_object().unwrap();
    for key in ["storage", "backup_id"] {
        assert!(obj.contains_key(key), "no {key} key: {e}");
        assert!(
            e[key].is_null() || e[key].is_string(),
            "{key} is neither null nor a string: {e}"
        );
    }
}

/// The one webhook POST a run delivered, as JSON.
#[track_caller]
fn one_event(r: &Receiver) -> (Request, serde_json::Value) {
    let reqs = delivered(r, 1);
    // Give a duplicate a moment to show up: exactly one is the point.
    let reqs = if reqs.len() == 1 {
        r.wait_for(2, Duration::from_millis(300))
    } else {
        reqs
    };
    assert_eq!(
        reqs.len(),
        1,
        "want exactly one delivery:\n{}",
        describe(&reqs)
    );
    let q = reqs[0].clone();
    assert_eq!(q.method, "POST", "{}", describe(&reqs));
    let e = q.json();
    (q, e)
}

#[test]
fn a_failing_backup_delivers_one_failure_event_and_keeps_its_exit_code() {
    // Without a notifier: the exit code to keep.
    let plain = setup("", "", "");
    plain
        .drkit(&["backup"])
        .expect_code(1)
        .expect_one_line_error("does not exist");

    let r = Receiver::start(Mode::Ok);
    let s = setup(
        &webhook("hook", &r.url("/hook"), ""),
        "notify = [\"hook\"]",
        "",
    );
    let b = s.drkit(&["backup"]);
    b.expect_code(1).expect_one_line_error("does not exist");
    let (q, e) = one_event(&r);
    assert_eq!(q.path, "/hook");
    assert!(
        q.header("content-type")
            .is_some_and(|c| c.contains("application/json")),
        "content-type: {:?}",
        q.header("content-type")
    );
    assert_event_shape(&e, "failure", "backup");
    // No storage got the backup (the source is missing): one event without storage.
    assert!(e["backup_id"].is_null(), "{e}");
}

#[test]
fn a_suspect_backup_delivers_one_suspect_event_with_the_backup_id() {
    let r = Receiver::start(Mode::Ok);
    let s = setup(
        &webhook("hook", &r.url("/hook"), ""),
        "notify = [\"hook\"]",
        "",
    );
    fill(&s.path("app.db"), 5000);
    s.drkit(&["backup"]).expect_code(0);
    // The default `on` has no success.
    assert_eq!(
        r.wait_for(1, Duration::from_millis(300)).len(),
        0,
        "a good backup notified"
    );
    keep_only(&s.path("app.db"), 0);
    let bad = s.drkit(&["--json", "backup"]);
    bad.expect_code(5);
    let id = backup_id(&bad);
    let (_, e) = one_event(&r);
    assert_event_shape(&e, "suspect", "backup");
    assert_eq!(e["backup_id"], id.as_str(), "{e}");
}

#[test]
fn a_failed_drill_delivers_one_drill_failure_event() {
    let r = Receiver::start(Mode::Ok);
    let s = setup(
        &webhook("hook", &r.url("/hook"), ""),
        "notify = [\"hook\"]",
        "[job.app.drill]\nchecks = [ { name = \"enough rows\", sql = \"select count(*) from t\", min = 1000 } ]\n",
    );
    fill(&s.path("app.db"), 10);
    s.drkit(&["backup"]).expect_code(0);
    let d = s.drkit(&["drill"]);
    d.expect_code(4);
    let (_, e) = one_event(&r);
    assert_event_shape(&e, "drill-failure", "drill");
    assert_eq!(e["storage"], "local", "{e}");
    assert!(e["backup_id"].is_string(), "{e}");
}

#[test]
fn on_success_hears_a_good_backup_and_the_default_does_not() {
    let yes = Receiver::start(Mode::Ok);
    let default = Receiver::start(Mode::Ok);
    let s = setup(
        &format!(
            "{}{}",
            webhook("yes", &yes.url("/yes"), "on = [\"success\"]"),
            webhook("default", &default.url("/default"), "")
        ),
        "notify = [\"yes\", \"default\"]",
        "",
    );
    fill(&s.path("app.db"), 100);
    let b = s.drkit(&["--json", "backup"]);
    b.expect_code(0);
    let id = backup_id(&b);
    let (_, e) = one_event(&yes);
    assert_event_shape(&e, "success", "backup");
    assert_eq!(e["backup_id"], id.as_str(), "{e}");
    assert!(
        e["figures"]["raw_bytes"].as_f64().is_some_and(|n| n > 0.0),
        "figures.raw_bytes of a backup: {e}"
    );
    assert_eq!(
        default.requests().len(),
        0,
        "the default `on` heard a success:\n{}",
        describe(&default.requests())
    );
}

#[test]
fn a_secret_signs_the_body_with_hmac_sha256() {
    let r = Receiver::start(Mode::Ok);
    let s = setup(
        &webhook("hook", &r.url("/hook"), "secret = \"s3cret\""),
        "notify = [\"hook\"]",
        "",
    );
    s.drkit(&["backup"]).expect_code(1);
    let (q, e) = one_event(&r);
    assert_eq!(e["event"], "failure");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&q.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let got = q
        .header("x-drkit-signature")
        .unwrap_or_else(|| panic!("no X-Drkit-Signature: {:?}", q.headers));
    assert!(got.starts_with("sha256="), "{got}");
    assert_eq!(got.to_ascii_lowercase(), want);
    // Without a secret, no signature.
    let r2 = Receiver::start(Mode::Ok);
    let s2 = setup(&webhook("hook", &r2.url("/hook"), ""), "", "");
    s2.drkit(&["backup"]).expect_code(1);
    let (q2, _) = one_event(&r2);
    assert_eq!(q2.header("x-drkit-signature"), None);
}

#[test]
fn a_template_is_the_body_with_json_escaped_fields() {
    let r = Receiver::start(Mode::Ok);
    let s = setup(
        &format!(
            "{}{}",
            webhook("plain", &r.url("/plain"), ""),
            webhook(
                "tpl",
                &r.url("/tpl"),
                "template = '{\"text\": \"{{job}}: {{message}}\"}'"
            )
        ),
        "",
        "",
    );
    // Whatever the message holds (the path, quotes), the body must stay valid JSON.
    std::fs::write(
        s.path("app.db"),
        "this is a text file, not a database, long enough to have a header............................................",
    )
    .unwrap();
    s.drkit(&["backup"]).expect_code(1);
    let reqs = delivered(&r, 2);
    assert_eq!(reqs.len(), 2, "{}", describe(&reqs));
    let plain = reqs.iter().find(|q| q.path == "/plain").expect("/plain");
    let tpl = reqs.iter().find(|q| q.path == "/tpl").expect("/tpl");
    let event = plain.json();
    let body = tpl.json();
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "the body is the template, nothing else: {body}"
    );
    assert_eq!(
        body["text"],
        format!("app: {}", event["message"].as_str().unwrap()),
        "{body} vs {event}"
    );
    assert!(
        tpl.header("content-type")
            .is_some_and(|c| c.contains("application/json")),
        "{:?}",
        tpl.headers
    );
}

#[test]
fn a_hanging_and_a_failing_receiver_cost_the_timeout_and_never_the_exit_code() {
    let stuck = Receiver::start(Mode::Hang);
    let broken = Receiver::start(Mode::Status(500));
    let s = setup(
        &format!(
            "{}{}",
            webhook("stuckhook", &stuck.url("/hook/SECRET123"), ""),
            webhook(
                "brokenhook",
                &broken.url("/hook/SECRET456?token=SECRET789"),
                ""
            )
        ),
        "notify = [\"stuckhook\", \"brokenhook\"]",
        "",
    );
    let t = Instant::now();
    let b = s.drkit(&["backup"]);
    let took = t.elapsed();
    b.expect_code(1);
    assert!(
        took < Duration::from_secs(10),
        "a 2 s timeout cost {took:?} (notifiers must be concurrent and bounded)"
    );
    let warnings: Vec<&str> = b.stderr.lines().filter(|l| l.contains("WARNING")).collect();
    for name in ["stuckhook", "brokenhook"] {
        assert!(
            warnings.iter().any(|l| l.contains(name)),
            "no WARNING names notifier {name}:\n{}",
            b.stderr
        );
    }
    for secret in ["SECRET123", "SECRET456", "SECRET789"] {
        assert!(
            !b.stderr.contains(secret) && !b.stdout.contains(secret),
            "{secret} printed:\n{}{}",
            b.stdout,
            b.stderr
        );
    }
    let attempts = broken.wait_for(3, Duration::from_secs(1));
    assert_eq!(
        attempts.len(),
        3,
        "a 500 receiver gets 3 attempts:\n{}",
        describe(&attempts)
    );
    // The retries back off (0.5 s, then 1 s).
    assert!(
        attempts[1].at.duration_since(attempts[0].at) >= Duration::from_millis(400),
        "no backoff between attempts"
    );
    assert!(
        !stuck.wait_for(1, Duration::from_secs(1)).is_empty(),
        "the hanging receiver never got the event"
    );
}

#[test]
fn a_ping_notifier_pings_start_then_success_or_fail() {
    let r = Receiver::start(Mode::Ok);
    let notify = format!(
        "[notify.hc]\ntype = \"ping\"\nurl = \"{}\"\n",
        r.url("/ping/abc")
    );
    let s = setup(&notify, "notify = [\"hc\"]", "");
    fill(&s.path("app.db"), 100);
    s.drkit(&["backup"]).expect_code(0);
    let reqs = delivered(&r, 2);
    let seen: Vec<(String, String)> = reqs
        .iter()
        .map(|q| (q.method.clone(), q.path.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("GET".to_string(), "/ping/abc/start".to_string()),
            ("GET".to_string(), "/ping/abc".to_string())
        ],
        "a good backup"
    );

    std::fs::remove_file(s.path("app.db")).unwrap();
    s.drkit(&["backup"]).expect_code(1);
    let reqs = delivered(&r, 4);
    let seen: Vec<(String, String)> = reqs[2..]
        .iter()
        .map(|q| (q.method.clone(), q.path.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("GET".to_string(), "/ping/abc/start".to_string()),
            ("POST".to_string(), "/ping/abc/fail".to_string())
        ],
        "a failing backup:\n{}",
        describe(&reqs)
    );
    assert!(
        !reqs[3].body_str().trim().is_empty(),
        "the fail ping has no message"
    );
}

#[test]
fn a_command_notifier_gets_the_event_json_on_stdin() {
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("event.json");
    let cmd = format!(
        "[notify.cmd]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"cat > {}\"]\ntimeout = \"5s\"\n",
        out.display()
    );
    let s = setup(&cmd, "notify = [\"cmd\"]", "");
    s.drkit(&["backup"]).expect_code(1);
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("the command wrote no {} ({e})", out.display()));
    let e: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|err| panic!("not JSON ({err}): {text:?}"));
    assert_event_shape(&e, "failure", "backup");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let s = setup("", "", "");
    fill(&s.path("app.db"), 100);
    let b = s.drkit(&["--json", "--log-format", "json", "backup"]);
    b.expect_code(0);
    let id = backup_id(&b);
    let lines = json_lines(&b.stderr);
    assert!(!lines.is_empty(), "no log line on stderr");
    let done = lines
        .iter()
        .find(|l| l["event"] == "backup.done")
        .unwrap_or_else(|| panic!("no backup.done event:\n{}", b.stderr));
    assert_eq!(done["job"], "app", "{done}");
    assert_eq!(done["storage"], "local", "{done}");
    assert_eq!(done["backup_id"], id.as_str(), "{done}");
    assert!(
        done["duration_s"].as_f64().is_some_and(|d| d >= 0.0),
        "duration_s: {done}"
    );
    assert!(lines.iter().all(|l| l["level"] != "ERROR"), "{}", b.stderr);

    // A failing backup: still one object per line, and the error is an ERROR.
    std::fs::remove_file(s.path("app.db")).unwrap();
    let f = s.drkit(&["--log-format", "json", "backup"]);
    f.expect_code(1);
    let lines = json_lines(&f.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "ERROR"
                && l["message"].as_str().unwrap().contains("does not exist")),
        "no ERROR line:\n{}",
        f.stderr
    );
}

/// Every stderr line as a JSON object with `timestamp`, `level` and `message`.
#[track_caller]
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line:?}\n{stderr}"));
            assert!(v.is_object(), "{line}");
            let ts = v["timestamp"]
                .as_str()
                .unwrap_or_else(|| panic!("no timestamp: {line}"));
            assert!(
                chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
                "timestamp {ts:?} is not RFC 3339"
            );
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .contains(&v["level"].as_str().unwrap_or("")),
                "level: {line}"
            );
            assert!(v["message"].is_string(), "no message: {line}");
            v
        })
        .collect()
}
