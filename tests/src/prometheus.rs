//! A real Prometheus server for the metrics tests, and `promtool`.
//!
//! [`Prometheus::start`] runs Debian's `prometheus` (`DRKIT_PROMETHEUS`, else
//! `/usr/bin/prometheus`) on a free loopback port with a temp TSDB, scraping one target every
//! second with `honor_labels: true` (so drkit's own `job` label is kept, not renamed to
//! `exported_job`), and waits until `/-/ready` answers 200. A server that cannot start is a
//! panic: a required server never skips a test. Dropping it kills the process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::receiver::{http_get, url_encode};

/// The `prometheus` binary: `DRKIT_PROMETHEUS`, else `/usr/bin/prometheus`.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("DRKIT_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// The `promtool` binary: `DRKIT_PROMTOOL`, else `/usr/bin/promtool`.
pub fn promtool() -> PathBuf {
    std::env::var_os("DRKIT_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/promtool"))
}

/// `promtool check metrics` on `exposition` (stdin): its exit code and what it printed.
/// Panics when promtool cannot be run.
pub fn check_metrics(exposition: &str) -> (i32, String) {
    use std::io::Write;
    let bin = promtool();
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): install prometheus", bin.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running Prometheus server.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping `target` (`127.0.0.1:PORT`, path `/metrics`) every second.
    pub fn start(target: &str) -> Prometheus {
        let bin = prometheus_bin();
        let mut last = String::new();
        // A free port can be taken between the probe and Prometheus binding it: try again.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: drkit\n    honor_labels: true\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
                ),
            )
            .expect("write prometheus.yml");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}): install prometheus (apt-get install prometheus) or set DRKIT_PROMETHEUS",
                        bin.display()
                    )
                });
            let mut p = Prometheus { child, port, dir };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = p.child.try_wait() {
                    last = format!(
                        "prometheus exited with {status}: {}",
                        std::fs::read_to_string(p.dir.path().join("prometheus.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if http_get(&p.url("/-/ready")).is_ok_and(|r| r.status == 200) {
                    return p;
                }
                if Instant::now() > deadline {
                    panic!(
                        "prometheus on port {} not ready after 60 s: {}",
                        p.port,
                        std::fs::read_to_string(p.dir.path().join("prometheus.log"))
                            .unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("prometheus did not start: {last}");
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET /api/v1/query?query=EXPR`: the whole answer (`{"status": "success", "data":
    /// {"resultType": ..., "result": [...]}}`); panics on an HTTP error or a failed query.
    pub fn query(&self, expr: &str) -> serde_json::Value {
        let url = self.url(&format!("/api/v1/query?query={}", url_encode(expr)));
        let a = http_get(&url).unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let v = a.json();
        assert!(
            a.status == 200 && v["status"] == "success",
            "query {expr}: {} {v}",
            a.status
        );
        v
    }

    /// The samples of an instant vector query: (labels, value) per series.
    pub fn query_vector(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let v = self.query(expr);
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let value = s["value"][1]
                            .as_str()
                            .and_then(|x| x.parse::<f64>().ok())
                            .unwrap_or(f64::NAN);
                        (s["metric"].clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Poll `expr` until it has at least one series or `timeout` passed.
    pub fn wait_vector(&self, expr: &str, timeout: Duration) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.query_vector(expr);
            if !v.is_empty() || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::{Mode, Receiver};

    #[test]
    fn promtool_accepts_good_and_rejects_bad_expositions() {
        let good = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{job=\"a\"} 2\n";
        let (code, out) = check_metrics(good);
        assert_eq!(code, 0, "{out}");
        let (code, _) = check_metrics("x{job=\"a\" 2\n");
        assert_ne!(code, 0);
    }

    #[test]
    fn prometheus_starts_scrapes_and_answers_queries() {
        // The receiver answers 200 with an empty body: an empty exposition, a target that is up.
        let r = Receiver::start(Mode::Ok);
        let p = Prometheus::start(&format!("127.0.0.1:{}", r.port()));
        let v = p.wait_vector("up{job=\"drkit\"} == 1", Duration::from_secs(30));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].1, 1.0);
        assert!(r.requests().iter().any(|q| q.path.starts_with("/metrics")));
        let v = p.query("vector(42)");
        assert_eq!(v["data"]["result"][0]["value"][1], "42");
    }
}
