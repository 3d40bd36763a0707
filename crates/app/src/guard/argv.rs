//! The argv analysis: does a command line destroy Docker volumes, and which ones?
//!
//! [`analyse`] reads the argument vector of a `docker` / `docker-compose` command the way
//! those tools do (global flags, combined short flags, `--flag=value`, `-p`/`--project-name`,
//! `-f`/`--file`, `--project-directory`, `--env-file`, `COMPOSE_PROJECT_NAME` and the `.env`
//! file, the compose file's top-level `name:`) and says what would be destroyed, in terms the
//! engine can resolve: "all volumes of compose project P", "volumes a, b", "unused volumes".
//! It touches nothing: the environment and the files it may read come in as functions.
//!
//! Recognised (`docker compose` and `docker-compose` alike):
//! `compose down -v|--volumes`, `compose rm -v|--volumes`, `volume rm|remove`,
//! `volume prune [-a]`, `system prune --volumes`, `rm -v|--volumes` / `container rm -v`;
//! behind `sudo`, `env`, `nice`, `timeout`, `nohup`, `command`, `exec`, `time`, `stdbuf` and
//! `sh -c`. What cannot be followed fails safe: refused when a docker command may be behind
//! it. Every spelling decided is a row of the `spellings` test table.

use std::path::{Path, PathBuf};

use drkit_core::{Error, Result};

use super::compose::{compose, Compose};
use super::wrappers;

/// What the command would destroy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doomed {
    /// `compose down -v`: the named volumes of the project (found by their compose labels)
    /// and the anonymous volumes of its containers.
    ProjectVolumes {
        /// The compose project name.
        project: String,
    },
    /// `compose rm -v`: the anonymous volumes of the project's stopped containers (of the
    /// services named, or all), and of running ones too with `--stop`.
    ProjectAnonymous {
        /// The compose project name.
        project: String,
        /// Services named on the command line (empty: all).
        services: Vec<String>,
        /// `-s/--stop`: running containers are stopped and removed too.
        running_too: bool,
    },
    /// `volume rm`: these volumes, by name.
    Named(Vec<String>),
    /// `volume prune` / `system prune --volumes`: the volumes no container uses. Engines
    /// before API 1.42 remove named ones too; later ones only anonymous ones unless `all`.
    Unused {
        /// `-a/--all`.
        all: bool,
        /// `--filter` values, passed to the engine (`label=...`).
        filters: Vec<String>,
    },
    /// `rm -v`: the anonymous volumes of these containers.
    ContainerAnonymous(Vec<String>),
}

/// The result of [`analyse`] for a destructive command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// What would be destroyed.
    pub doomed: Doomed,
    /// A sentence for the operator, e.g. `all volumes of compose project myapp (name from -p)`.
    pub summary: String,
    /// `-H/--host` given to docker (the guard must ask that engine).
    pub docker_host: Option<String>,
}

/// What [`analyse`] may look at besides the arguments.
pub struct Context<'a> {
    /// The working directory the command runs in.
    pub cwd: &'a Path,
    /// The environment the command runs with.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Read a file (for `.env` and compose files); `None` when it does not exist.
    pub read: &'a dyn Fn(&Path) -> Option<String>,
}

/// Whether `argv` destroys volumes, and which. `Ok(None)`: it destroys none (or is not a
/// docker command). An error: it might, but how cannot be told (e.g. `--context`, an option
/// of `sudo` or `env` the guard does not know): the guard refuses rather than guesses.
///
/// Wrappers are followed to the docker command they run, with their options and the
/// environment and directory they set: `sudo` (its options, `VAR=value`, the environment it
/// resets unless `-E`, `-D/--chdir`, `-i`), `env` (`-i`, `-u`, `-C`, `-S`, `VAR=value`),
/// `nice`, `timeout`, `nohup`, `command`, `exec`, `time`, `stdbuf`, and `sh|bash -c
/// 'one simple command'`.
pub fn analyse(argv: &[String], ctx: &Context<'_>) -> Result<Option<Analysis>> {
    let Some(launch) = wrappers::follow(argv, ctx)? else {
        return Ok(None);
    };
    let env = |k: &str| launch.get(k);
    let inner = Context {
        cwd: &launch.cwd,
        env: &env,
        read: ctx.read,
    };
    let args: Vec<&str> = launch.args.iter().map(String::as_str).collect();
    let program = base(args[0]);
    let rest = &args[1..];
    let found = match program {
        "docker" => docker(rest, &inner)?,
        _ => compose(rest, &inner, None, Compose::V1)?,
    };
    let Some(mut found) = found else {
        return Ok(None);
    };
    if let Some(root) = &launch.chroot {
        return Err(Error::refused(format!(
            "this command destroys {}, run by sudo in the chroot {root:?}, which drkit guard cannot follow: nothing was run",
            found.summary
        )));
    }
    if found.docker_host.is_none() {
        // The engine the command talks to: its DOCKER_HOST, which a wrapper may have set or
        // removed (the guard itself connects with its own DOCKER_HOST otherwise).
        let theirs = launch.get("DOCKER_HOST").filter(|h| !h.is_empty());
        let ours = (ctx.env)("DOCKER_HOST").filter(|h| !h.is_empty());
        if theirs != ours {
            found.docker_host = Some(theirs.unwrap_or_else(|| DEFAULT_SOCKET.to_string()));
        }
    }
    let uncertain = launch.uncertain.borrow();
    if !uncertain.is_empty() {
        let vars: Vec<&str> = uncertain.iter().map(String::as_str).collect();
        return Err(Error::refused(format!(
            "this command destroys {}, run by sudo, which passes {} to it or not depending on sudoers (env_reset, env_keep), so the guard cannot tell what it destroys: nothing was run; use sudo -E, sudo --preserve-env={}, or set the variable on the sudo command line (sudo {}=... docker ...)",
            found.summary,
            vars.join(", "),
            vars.join(","),
            vars[0]
        )));
    }
    Ok(Some(found))
}

/// The engine docker talks to when nothing names another.
pub(super) const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// A program's name without its directory.
pub(super) fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// A command-line flag spec: names, and whether it takes a value.
pub(super) struct Flags {
    pub(super) with_value: &'static [&'static str],
}

/// One parsed token stream: flags (name, value) and positionals, stopping at `stop_at_positional`.
#[derive(Debug, Default)]
pub(super) struct Parsed<'a> {
    pub(super) flags: Vec<(String, Option<&'a str>)>,
    pub(super) positionals: Vec<&'a str>,
    pub(super) rest: &'a [&'a str],
}

impl Parsed<'_> {
    pub(super) fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|(n, v)| {
            names.contains(&n.as_str())
                && !matches!(
                    v.map(str::to_ascii_lowercase).as_deref(),
                    Some("false" | "0")
                )
        })
    }
    pub(super) fn values(&self, names: &[&str]) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .filter_map(|(_, v)| *v)
            .collect()
    }
    pub(super) fn last(&self, names: &[&str]) -> Option<&str> {
        self.values(names).last().copied()
    }
}

/// Parse flags. With `stop_at_positional`, parsing stops at the first positional (the
/// subcommand), leaving it and what follows in `rest`.
pub(super) fn parse<'a>(args: &'a [&'a str], spec: &Flags, stop_at_positional: bool) -> Parsed<'a> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if a == "--" {
            p.positionals.extend(&args[i + 1..]);
            i = args.len();
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v)),
                None => (a.to_string(), None),
            };
            if inline.is_none() && spec.with_value.contains(&name.as_str()) {
                p.flags.push((name, args.get(i + 1).copied()));
                i += 2;
            } else {
                p.flags.push((name, inline));
                i += 1;
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            // Combined short flags: -fsv, -vt 5, -p name, -pname.
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            let mut consumed_next = false;
            while j < chars.len() {
                let name = format!("-{}", chars[j]);
                if spec.with_value.contains(&name.as_str()) {
                    let tail: String = chars[j + 1..].iter().collect();
                    let tail = tail.strip_prefix('=').map(str::to_string).unwrap_or(tail);
                    if tail.is_empty() {
                        p.flags.push((name, args.get(i + 1).copied()));
                        consumed_next = true;
                    } else {
                        // The value is the rest of this token: leak-free by slicing.
                        let offset = a.len() - tail.len();
                        p.flags.push((name, Some(&a[offset..])));
                    }
                    break;
                }
                p.flags.push((name, None));
                j += 1;
            }
            i += if consumed_next { 2 } else { 1 };
            continue;
        }
        if stop_at_positional {
            p.rest = &args[i..];
            return p;
        }
        p.positionals.push(a);
        i += 1;
    }
    p.rest = &args[args.len().min(i)..];
    p
}

const DOCKER_GLOBAL: Flags = Flags {
    with_value: &[
        "-H",
        "--host",
        "-c",
        "--context",
        "--config",
        "-l",
        "--log-level",
        "--tlscacert",
        "--tlscert",
        "--tlskey",
    ],
};

/// docker's global options without a value.
const DOCKER_GLOBAL_FLAGS: &[&str] = &[
    "-D",
    "--debug",
    "--tls",
    "--tlsverify",
    "-v",
    "--version",
    "-h",
    "--help",
];

/// Words after which an option the guard does not know may hide a destructive command.
const DESTRUCTIVE_WORDS: &[&str] = &["rm", "remove", "prune", "down", "delete"];

/// Refuse when `p` holds an option the guard does not know (it may take a value and so
/// shift the subcommand) and a destructive word follows.
pub(super) fn unknown_global(
    p: &Parsed<'_>,
    value_flags: &Flags,
    bool_flags: &[&str],
    what: &str,
) -> Result<()> {
    let unknown = p
        .flags
        .iter()
        .map(|(n, _)| n.as_str())
        .find(|n| !value_flags.with_value.contains(n) && !bool_flags.contains(n));
    if let Some(flag) = unknown {
        if p.rest.iter().any(|w| DESTRUCTIVE_WORDS.contains(w)) {
            return Err(Error::refused(format!(
                "drkit guard does not know the {what} option {flag}, so it cannot tell whether this command destroys volumes: nothing was run"
            )));
        }
    }
    Ok(())
}

/// The docker CLI's current context from its config file (`docker context use`), when
/// neither `-H` nor `DOCKER_HOST` overrides it. `config_dir` is docker's `--config`.
pub(super) fn current_context(ctx: &Context<'_>, config_dir: Option<&str>) -> Option<String> {
    if (ctx.env)("DOCKER_HOST").is_some_and(|h| !h.is_empty()) {
        return None;
    }
    let dir = match config_dir {
        Some(d) => ctx.cwd.join(d),
        None => match (ctx.env)("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            Some(d) => ctx.cwd.join(d),
            None => PathBuf::from((ctx.env)("HOME")?).join(".docker"),
        },
    };
    let text = (ctx.read)(&dir.join("config.json"))?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("currentContext")?
        .as_str()
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

fn docker(args: &[&str], ctx: &Context<'_>) -> Result<Option<Analysis>> {
    let g = parse(args, &DOCKER_GLOBAL, true);
    if g.has(&["-v", "--version", "-h", "--help"]) {
        return Ok(None);
    }
    unknown_global(&g, &DOCKER_GLOBAL, DOCKER_GLOBAL_FLAGS, "docker")?;
    let host = g.last(&["-H", "--host"]).map(str::to_string);
    let context = g
        .last(&["-c", "--context"])
        .map(str::to_string)
        .or_else(|| (ctx.env)("DOCKER_CONTEXT").filter(|c| !c.is_empty()))
        .or_else(|| {
            host.is_none()
                .then(|| current_context(ctx, g.last(&["--config"])))
                .flatten()
        });
    let Some((&sub, rest)) = g.rest.split_first() else {
        return Ok(None);
    };
    let found = match sub {
        "compose" => compose(rest, ctx, host.clone(), Compose::V2)?,
        "volume" => volume(rest)?,
        "system" => system(rest),
        "rm" => container_rm(rest),
        "container" => match rest.split_first() {
            Some((&"rm", r)) | Some((&"remove", r)) => container_rm(r),
            _ => None,
        },
        _ => None,
    };
    let Some(mut found) = found else {
        return Ok(None);
    };
    if let Some(c) = context.filter(|c| c != "default") {
        return Err(Error::refused(format!(
            "this command destroys {}, on docker context {c:?}, which drkit guard cannot follow: set DOCKER_HOST to that engine instead of using a context",
            found.summary
        )));
    }
    if found.docker_host.is_none() {
        found.docker_host = host;
    }
    Ok(Some(found))
}

fn volume(args: &[&str]) -> Result<Option<Analysis>> {
    let Some((&sub, rest)) = args.split_first() else {
        return Ok(None);
    };
    match sub {
        "rm" | "remove" => {
            let p = parse(rest, &Flags { with_value: &[] }, false);
            if p.has(&["--help", "-h"]) || p.positionals.is_empty() {
                return Ok(None);
            }
            let names: Vec<String> = p.positionals.iter().map(|s| s.to_string()).collect();
            Ok(Some(Analysis {
                summary: format!(
                    "volume{} {}",
                    if names.len() > 1 { "s" } else { "" },
                    names.join(", ")
                ),
                doomed: Doomed::Named(names),
                docker_host: None,
            }))
        }
        "prune" => {
            let p = parse(
                rest,
                &Flags {
                    with_value: &["--filter"],
                },
                false,
            );
            if p.has(&["--help", "-h"]) {
                return Ok(None);
            }
            Ok(Some(unused(
                p.has(&["-a", "--all"]),
                p.values(&["--filter"]),
            )))
        }
        _ => Ok(None),
    }
}

fn unused(all: bool, filters: Vec<&str>) -> Analysis {
    let filters: Vec<String> = filters.into_iter().map(str::to_string).collect();
    let mut summary = if all {
        "all unused volumes".to_string()
    } else {
        "unused volumes".to_string()
    };
    if !filters.is_empty() {
        summary.push_str(&format!(" matching {}", filters.join(", ")));
    }
    Analysis {
        doomed: Doomed::Unused { all, filters },
        summary,
        docker_host: None,
    }
}

fn system(args: &[&str]) -> Option<Analysis> {
    let (&sub, rest) = args.split_first()?;
    if sub != "prune" {
        return None;
    }
    let p = parse(
        rest,
        &Flags {
            with_value: &["--filter"],
        },
        false,
    );
    if p.has(&["--help", "-h"]) || !p.has(&["--volumes"]) {
        return None;
    }
    Some(unused(p.has(&["-a", "--all"]), p.values(&["--filter"])))
}

fn container_rm(args: &[&str]) -> Option<Analysis> {
    let p = parse(args, &Flags { with_value: &[] }, false);
    if p.has(&["--help"]) || !p.has(&["-v", "--volumes"]) || p.positionals.is_empty() {
        return None;
    }
    let names: Vec<String> = p.positionals.iter().map(|s| s.to_string()).collect();
    Some(Analysis {
        summary: format!(
            "the anonymous volumes of container{} {}",
            if names.len() > 1 { "s" } else { "" },
            names.join(", ")
        ),
        doomed: Doomed::ContainerAnonymous(names),
        docker_host: None,
    })
}
