//! The monitoring examples (docs/monitoring.md) are valid and match the documented metrics:
//! the Prometheus rules and their unit tests pass `promtool`, the scrape config is valid, the
//! Grafana dashboard is JSON whose queries name only documented metrics, and the notifier
//! examples are complete configs that load and validate.
//!
//! `promtool` is `$DRKIT_PROMTOOL` when set (scripts/servers.sh exports Debian's
//! /usr/bin/promtool), else `promtool` on PATH. A missing promtool fails these tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn promtool() -> String {
    std::env::var("DRKIT_PROMTOOL")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "promtool".to_string())
}

/// Run promtool with `args` in examples/prometheus; panics (the test fails) when it cannot run
/// or does not succeed.
fn run_promtool(args: &[&str]) -> String {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(root().join("examples/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {tool:?} ({e}): install Debian's `prometheus` package \
                 (scripts/servers.sh install) or set DRKIT_PROMTOOL"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// Every `drkit_...` identifier in `text` (a name starts after a character that cannot be part
/// of one).
fn metric_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("drkit_") {
        if text[..i].chars().next_back().is_some_and(ident) {
            continue;
        }
        let end = text[i..]
            .find(|c: char| !ident(c))
            .map_or(text.len(), |n| i + n);
        names.insert(text[i..end].to_string());
    }
    names
}

/// The metric names of docs/monitoring.md's metric table: the first cell of each row
/// `| \`drkit_...\` | type | labels | meaning |`.
fn documented_metrics() -> BTreeSet<String> {
    let doc = read("docs/monitoring.md");
    let names: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `drkit_"))
        .map(|rest| {
            format!(
                "drkit_{}",
                &rest[..rest.find('`').expect("closing backtick")]
            )
        })
        .collect();
    assert!(
        names.len() >= 15 && names.contains("drkit_backup_last_success_timestamp_seconds"),
        "the metric table of docs/monitoring.md was not found: {names:?}"
    );
    names
}

#[test]
fn prometheus_rules_pass_promtool_check() {
    let out = run_promtool(&["check", "rules", "drkit-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn prometheus_rules_unit_tests_pass() {
    let out = run_promtool(&["test", "rules", "drkit-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file is exercised by the unit tests.
    let rules = read("examples/prometheus/drkit-rules.yml");
    let tests = read("examples/prometheus/drkit-rules.test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no test in drkit-rules.test.yml"
        );
    }
}

#[test]
fn prometheus_config_passes_promtool_check() {
    let out = run_promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("is valid prometheus config"), "{out}");
}

/// Every string under an `expr` key, and every templating variable's query.
fn dashboard_queries(v: &serde_json::Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if matches!(key, Some("expr") | Some("query")) => {
            out.push(s.clone())
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_queries(item, key, out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                dashboard_queries(item, Some(k), out);
            }
        }
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_only_documented_metrics() {
    let doc = documented_metrics();
    let text = read("examples/grafana/drkit-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&text).expect("examples/grafana/drkit-dashboard.json is JSON");
    assert!(
        dash["__inputs"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "no DS_PROMETHEUS datasource input"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        let before = exprs.len();
        dashboard_queries(&p["targets"], None, &mut exprs);
        assert!(exprs.len() > before, "panel {} has no query", p["title"]);
    }
    dashboard_queries(&dash["templating"], None, &mut exprs);
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "query names no drkit metric: {expr}");
        for name in names {
            assert!(
                doc.contains(&name),
                "dashboard query uses {name}, which is not in docs/monitoring.md's table: {expr}"
            );
            used.insert(name);
        }
    }
    // The panels the dashboard is for.
    for name in [
        "drkit_backup_last_success_timestamp_seconds",
        "drkit_drill_last_success_timestamp_seconds",
        "drkit_drill_last_rto_seconds",
        "drkit_drill_rto_goal_seconds",
        "drkit_backup_last_raw_bytes",
        "drkit_backup_last_stored_bytes",
        "drkit_backup_suspect",
        "drkit_backup_failures_total",
        "drkit_storage_up",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}

#[test]
fn prometheus_rules_use_only_documented_metrics() {
    let doc = documented_metrics();
    for file in [
        "examples/prometheus/drkit-rules.yml",
        "examples/prometheus/drkit-rules.test.yml",
    ] {
        let names = metric_names(&read(file));
        assert!(names.len() >= 10, "{file}: {names:?}");
        for name in names {
            assert!(
                doc.contains(&name),
                "{file} uses {name}, which is not in docs/monitoring.md's table"
            );
        }
    }
}

#[test]
fn notify_examples_load_and_validate() {
    for (name, vars) in [
        ("slack", &["SLACK_WEBHOOK_PATH", "HC_PING_UUID"][..]),
        ("discord", &["DISCORD_WEBHOOK_PATH", "HC_PING_UUID"][..]),
        ("ntfy", &["NTFY_TOPIC", "NTFY_TOKEN", "HC_PING_UUID"][..]),
    ] {
        let file = format!("examples/notify-{name}.toml");
        let path = root().join(&file);
        let asked = std::cell::RefCell::new(BTreeSet::new());
        let lookup = |var: &str| -> Option<String> {
            asked.borrow_mut().insert(var.to_string());
            Some("x".into())
        };
        let config = drkit_core::Config::load(&path, &lookup)
            .unwrap_or_else(|e| panic!("{file} does not load: {e}"));
        drkit_drivers::validate(&config)
            .unwrap_or_else(|e| panic!("{file} does not validate: {e}"));
        assert_eq!(config.notify.len(), 2, "{file}");
        assert!(config.notify.contains_key(name), "{file}");
        assert!(config.notify.contains_key("heartbeat"), "{file}");
        assert_eq!(
            config.job["app"].notify,
            Some(vec![name.to_string(), "heartbeat".to_string()]),
            "{file}"
        );
        assert_eq!(config.job["app"].source.kind, "sqlite", "{file}");
        // The secrets come from the variables the file's comments tell the reader to set.
        let text = read(&file);
        let asked = asked.into_inner();
        let expected: BTreeSet<String> = vars.iter().map(|v| v.to_string()).collect();
        assert_eq!(asked, expected, "{file}: the ${{VAR}}s it uses");
        for var in vars {
            assert!(
                text.lines().any(|l| l.starts_with('#') && l.contains(var)),
                "{file}: the comments do not explain {var}"
            );
        }
    }
}
