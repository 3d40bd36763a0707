//! Fuzz target: the guard's reading of a command line (`drkit_app::guard::analyse`), with a
//! fake environment and fake files (`.env`, compose files, docker's config.json) from the
//! input. Input: argv lines, then `\x1e` and `KEY=VALUE` lines of the environment, then for
//! each file `\x1e`, its path, a newline and its content.
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use drkit_app::guard::{analyse, normalize_project, Context};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\x1e');
    let argv: Vec<String> = parts
        .next()
        .unwrap_or_default()
        .split('\n')
        .map(String::from)
        .collect();
    let env: HashMap<String, String> = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cwd = PathBuf::from("/work/proj");
    let files: HashMap<PathBuf, String> = parts
        .map(|f| {
            let (path, content) = f.split_once('\n').unwrap_or((f, ""));
            (cwd.join(path), content.to_string())
        })
        .collect();
    let env_fn = |k: &str| env.get(k).cloned();
    let read_fn = |p: &Path| files.get(p).cloned();
    let ctx = Context {
        cwd: &cwd,
        env: &env_fn,
        read: &read_fn,
    };
    if let Ok(Some(a)) = analyse(&argv, &ctx) {
        let _ = (a.summary.len(), a.docker_host);
    }
    if let Some(first) = argv.first() {
        let _ = normalize_project(first);
    }
});
