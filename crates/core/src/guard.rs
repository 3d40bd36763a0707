//! The guard's pure half: does a command line destroy Docker volumes, and which ones?
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
//! `volume prune [-a]`, `system prune --volumes`, `rm -v|--volumes` / `container rm -v`.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

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
/// docker command). An error: it might, but how cannot be told (e.g. `--context`).
pub fn analyse(argv: &[String], ctx: &Context<'_>) -> Result<Option<Analysis>> {
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut extra_env: Vec<(String, String)> = Vec::new();
    // `sudo [-E ...] docker ...`, `env [VAR=value ...] docker ...`
    loop {
        let Some(first) = args.first() else {
            return Ok(None);
        };
        match base(first) {
            "sudo" => {
                args.remove(0);
                while let Some(a) = args.first() {
                    if *a == "--" {
                        args.remove(0);
                        break;
                    }
                    if !a.starts_with('-') {
                        break;
                    }
                    let takes_value = matches!(
                        *a,
                        "-u" | "-g" | "-C" | "-D" | "-h" | "-p" | "-r" | "-t" | "-U" | "-T"
                    );
                    args.remove(0);
                    if takes_value && !args.is_empty() {
                        args.remove(0);
                    }
                }
            }
            "env" => {
                args.remove(0);
                while let Some(a) = args.first() {
                    if a.starts_with('-') {
                        args.remove(0);
                    } else if let Some((k, v)) = a.split_once('=') {
                        extra_env.push((k.to_string(), v.to_string()));
                        args.remove(0);
                    } else {
                        break;
                    }
                }
            }
            _ => break,
        }
    }
    let env = |k: &str| -> Option<String> {
        extra_env
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .or_else(|| (ctx.env)(k))
    };
    let ctx = Context {
        cwd: ctx.cwd,
        env: &env,
        read: ctx.read,
    };
    let program = base(args[0]);
    let rest = &args[1..];
    match program {
        "docker" => docker(rest, &ctx),
        "docker-compose" => compose(rest, &ctx, None, Compose::V1),
        _ => Ok(None),
    }
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// A command-line flag spec: names, and whether it takes a value.
struct Flags {
    with_value: &'static [&'static str],
}

/// One parsed token stream: flags (name, value) and positionals, stopping at `stop_at_positional`.
#[derive(Debug, Default)]
struct Parsed<'a> {
    flags: Vec<(String, Option<&'a str>)>,
    positionals: Vec<&'a str>,
    rest: &'a [&'a str],
}

impl Parsed<'_> {
    fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|(n, v)| {
            names.contains(&n.as_str())
                && !matches!(
                    v.map(str::to_ascii_lowercase).as_deref(),
                    Some("false" | "0")
                )
        })
    }
    fn values(&self, names: &[&str]) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .filter_map(|(_, v)| *v)
            .collect()
    }
    fn last(&self, names: &[&str]) -> Option<&str> {
        self.values(names).last().copied()
    }
}

/// Parse flags. With `stop_at_positional`, parsing stops at the first positional (the
/// subcommand), leaving it and what follows in `rest`.
fn parse<'a>(args: &'a [&'a str], spec: &Flags, stop_at_positional: bool) -> Parsed<'a> {
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

fn docker(args: &[&str], ctx: &Context<'_>) -> Result<Option<Analysis>> {
    let g = parse(args, &DOCKER_GLOBAL, true);
    let host = g.last(&["-H", "--host"]).map(str::to_string);
    let context = g
        .last(&["-c", "--context"])
        .map(str::to_string)
        .or_else(|| (ctx.env)("DOCKER_CONTEXT"));
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Compose {
    V1,
    V2,
}

const COMPOSE_GLOBAL: Flags = Flags {
    with_value: &[
        "-f",
        "--file",
        "-p",
        "--project-name",
        "--project-directory",
        "--env-file",
        "--profile",
        "--ansi",
        "--parallel",
        "-c",
        "--context",
        "-H",
        "--host",
        "--log-level",
        "--tlscacert",
        "--tlscert",
        "--tlskey",
        "--progress",
    ],
};

fn compose(
    args: &[&str],
    ctx: &Context<'_>,
    docker_host: Option<String>,
    flavour: Compose,
) -> Result<Option<Analysis>> {
    let g = parse(args, &COMPOSE_GLOBAL, true);
    if g.has(&["--dry-run"])
        || g.has(&["--help", "-h"])
        || (flavour == Compose::V1 && g.has(&["-v", "--version"]))
    {
        return Ok(None);
    }
    let Some((&sub, rest)) = g.rest.split_first() else {
        return Ok(None);
    };
    let doomed = match sub {
        "down" => {
            let p = parse(
                rest,
                &Flags {
                    with_value: &["--rmi", "-t", "--timeout"],
                },
                false,
            );
            if p.has(&["--help", "-h"]) || !p.has(&["-v", "--volumes"]) {
                return Ok(None);
            }
            None
        }
        "rm" => {
            let p = parse(rest, &Flags { with_value: &[] }, false);
            if p.has(&["--help", "-h"]) || !p.has(&["-v", "--volumes"]) {
                return Ok(None);
            }
            Some((
                p.positionals
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
                p.has(&["-s", "--stop"]),
            ))
        }
        _ => return Ok(None),
    };
    let (project, how) = project_name(&g, ctx);
    let host = docker_host.or_else(|| g.last(&["-H", "--host"]).map(str::to_string));
    if let Some(c) = g.last(&["-c", "--context"]).filter(|c| *c != "default") {
        return Err(Error::refused(format!(
            "this command destroys volumes of compose project {project}, on docker context {c:?}, which drkit guard cannot follow: set DOCKER_HOST instead"
        )));
    }
    Ok(Some(match doomed {
        None => Analysis {
            summary: format!("all volumes of compose project {project} (project name {how})"),
            doomed: Doomed::ProjectVolumes { project },
            docker_host: host,
        },
        Some((services, running_too)) => Analysis {
            summary: format!(
                "the anonymous volumes of the {}containers of compose project {project}{} (project name {how})",
                if running_too { "" } else { "stopped " },
                if services.is_empty() { String::new() } else { format!(", services {}", services.join(", ")) }
            ),
            doomed: Doomed::ProjectAnonymous { project, services, running_too },
            docker_host: host,
        },
    }))
}

const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// The project name compose would use, and where it came from.
fn project_name(g: &Parsed<'_>, ctx: &Context<'_>) -> (String, String) {
    if let Some(p) = g.last(&["-p", "--project-name"]) {
        return (normalize_project(p), "from -p/--project-name".into());
    }
    if let Some(p) = (ctx.env)("COMPOSE_PROJECT_NAME").filter(|p| !p.is_empty()) {
        return (normalize_project(&p), "from COMPOSE_PROJECT_NAME".into());
    }
    let cwd = ctx.cwd.to_path_buf();
    let abs = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let dotenv_cwd = g
        .last(&["--env-file"])
        .map(abs)
        .unwrap_or_else(|| cwd.join(".env"));
    // The compose files: -f, else COMPOSE_FILE (also from ./.env), else found upwards.
    let files: Vec<PathBuf> = {
        let given = g.values(&["-f", "--file"]);
        if !given.is_empty() {
            given.into_iter().filter(|f| *f != "-").map(abs).collect()
        } else if let Some(list) =
            (ctx.env)("COMPOSE_FILE").or_else(|| env_file_value(ctx, &dotenv_cwd, "COMPOSE_FILE"))
        {
            let sep = (ctx.env)("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|| ":".into());
            list.split(sep.as_str())
                .filter(|s| !s.is_empty())
                .map(abs)
                .collect()
        } else {
            find_upwards(ctx, &cwd).into_iter().collect()
        }
    };
    let project_dir = g
        .last(&["--project-directory"])
        .map(abs)
        .or_else(|| {
            files
                .first()
                .and_then(|f| f.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| cwd.clone());
    let dotenv = g
        .last(&["--env-file"])
        .map(abs)
        .unwrap_or_else(|| project_dir.join(".env"));
    if let Some(p) = env_file_value(ctx, &dotenv, "COMPOSE_PROJECT_NAME").filter(|p| !p.is_empty())
    {
        return (
            normalize_project(&p),
            format!("from COMPOSE_PROJECT_NAME in {}", dotenv.display()),
        );
    }
    for f in &files {
        if let Some(name) = (ctx.read)(f).and_then(|text| top_level_name(&text)) {
            return (
                normalize_project(&name),
                format!("from `name:` in {}", f.display()),
            );
        }
    }
    let dir_name = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        normalize_project(&dir_name),
        format!("from the directory {}", project_dir.display()),
    )
}

fn find_upwards(ctx: &Context<'_>, start: &Path) -> Option<PathBuf> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        for name in COMPOSE_FILES {
            let f = d.join(name);
            if (ctx.read)(&f).is_some() {
                return Some(f);
            }
        }
        dir = d.parent();
    }
    None
}

fn env_file_value(ctx: &Context<'_>, file: &Path, key: &str) -> Option<String> {
    let text = (ctx.read)(file)?;
    let pairs = crate::config::parse_env_file(&text, &file.display().to_string()).ok()?;
    pairs
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The compose file's top-level `name:` (a plain scalar; `${VAR}` is not expanded).
fn top_level_name(text: &str) -> Option<String> {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("name:") else {
            continue;
        };
        let v = rest.split(" #").next().unwrap_or("").trim();
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        if !v.is_empty() && !v.contains("${") {
            return Some(v.to_string());
        }
    }
    None
}

/// Compose's normalization: lowercase, only `[a-z0-9_-]`, no leading `_` or `-`.
pub fn normalize_project(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lowered.trim_start_matches(['_', '-']).to_string()
}

/// A shell function for bash and zsh that sends `docker` and `docker-compose` through the
/// guard (`drkit guard --install`). `drkit` is the path of the drkit binary.
pub fn shell_function(drkit: &str) -> String {
    let q = shell_quote(drkit);
    format!(
        r#"# drkit guard: refuse `docker compose down -v`, `docker volume rm`, `prune` ... when the
# volumes they destroy have no fresh, verified backup. Add to ~/.bashrc or ~/.zshrc:
#   eval "$({q} guard --install)"
# Bypass once with: command docker ...
docker() {{ {q} guard -- docker "$@"; }}
docker-compose() {{ {q} guard -- docker-compose "$@"; }}
"#
    )
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct World {
        env: HashMap<&'static str, &'static str>,
        files: HashMap<&'static str, &'static str>,
        cwd: &'static str,
    }

    impl World {
        fn new() -> World {
            World {
                env: HashMap::new(),
                files: HashMap::new(),
                cwd: "/srv/My App",
            }
        }
        fn run(&self, cmd: &str) -> Result<Option<Analysis>> {
            let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            let env = |k: &str| self.env.get(k).map(|v| v.to_string());
            let read = |p: &Path| self.files.get(p.to_str().unwrap()).map(|v| v.to_string());
            analyse(
                &argv,
                &Context {
                    cwd: Path::new(self.cwd),
                    env: &env,
                    read: &read,
                },
            )
        }
        fn doomed(&self, cmd: &str) -> Option<Doomed> {
            self.run(cmd)
                .unwrap_or_else(|e| panic!("{cmd}: {e}"))
                .map(|a| a.doomed)
        }
    }

    fn project(p: &str) -> Option<Doomed> {
        Some(Doomed::ProjectVolumes { project: p.into() })
    }

    #[test]
    fn destructive_forms() {
        let mut w = World::new();
        w.files
            .insert("/srv/My App/docker-compose.yml", "services: {}\n");
        let named = |v: &[&str]| Some(Doomed::Named(v.iter().map(|s| s.to_string()).collect()));
        let unused = |all: bool, f: &[&str]| {
            Some(Doomed::Unused {
                all,
                filters: f.iter().map(|s| s.to_string()).collect(),
            })
        };
        let cases: Vec<(&str, Option<Doomed>)> = vec![
            ("docker compose down -v", project("myapp")),
            ("docker compose down --volumes", project("myapp")),
            ("docker compose down --volumes=true", project("myapp")),
            ("docker compose down --remove-orphans -v", project("myapp")),
            ("docker compose down -v --rmi all -t 3", project("myapp")),
            ("docker compose down -vt 5", project("myapp")),
            ("docker compose down -t5 -v", project("myapp")),
            ("docker-compose down -v", project("myapp")),
            (
                "/usr/local/bin/docker-compose down --volumes",
                project("myapp"),
            ),
            ("docker compose -p prod down -v", project("prod")),
            (
                "docker compose --project-name=Prod.X down -v",
                project("prodx"),
            ),
            ("docker compose -pprod down -v", project("prod")),
            (
                "docker-compose --project-name prod -f other.yml down -v",
                project("prod"),
            ),
            ("docker -H unix:///x.sock compose down -v", project("myapp")),
            (
                "docker --log-level debug compose --ansi never down -v",
                project("myapp"),
            ),
            ("sudo -E docker compose down -v", project("myapp")),
            (
                "env COMPOSE_PROJECT_NAME=fromenv docker compose down -v",
                project("fromenv"),
            ),
            (
                "docker compose rm -v",
                Some(Doomed::ProjectAnonymous {
                    project: "myapp".into(),
                    services: vec![],
                    running_too: false,
                }),
            ),
            (
                "docker compose rm -fsv db",
                Some(Doomed::ProjectAnonymous {
                    project: "myapp".into(),
                    services: vec!["db".into()],
                    running_too: true,
                }),
            ),
            (
                "docker-compose rm -f -v web",
                Some(Doomed::ProjectAnonymous {
                    project: "myapp".into(),
                    services: vec!["web".into()],
                    running_too: false,
                }),
            ),
            ("docker volume rm a b", named(&["a", "b"])),
            ("docker volume rm -f a", named(&["a"])),
            ("docker volume remove a", named(&["a"])),
            ("docker volume prune", unused(false, &[])),
            ("docker volume prune -a -f", unused(true, &[])),
            ("docker volume prune -af", unused(true, &[])),
            (
                "docker volume prune --all --filter label=x=y",
                unused(true, &["label=x=y"]),
            ),
            (
                "docker volume prune --filter=label=a",
                unused(false, &["label=a"]),
            ),
            ("docker system prune --volumes", unused(false, &[])),
            ("docker system prune -af --volumes", unused(true, &[])),
            (
                "docker rm -fv c1",
                Some(Doomed::ContainerAnonymous(vec!["c1".into()])),
            ),
            (
                "docker container rm --volumes c1 c2",
                Some(Doomed::ContainerAnonymous(vec!["c1".into(), "c2".into()])),
            ),
        ];
        for (cmd, want) in cases {
            assert_eq!(w.doomed(cmd), want, "{cmd}");
        }
    }

    #[test]
    fn harmless_lookalikes() {
        let w = World::new();
        for cmd in [
            "docker compose down",
            "docker compose down --volumes=false",
            "docker compose down --rmi local",
            "docker-compose down -t 10",
            "docker-compose -v",
            "docker-compose -v down",
            "docker compose --dry-run down -v",
            "docker compose down --help -v",
            "docker compose up -d",
            "docker compose rm -f",
            "docker compose logs -v",
            "docker compose ps",
            "docker volume ls",
            "docker volume inspect x",
            "docker volume create x",
            "docker volume rm",
            "docker system prune",
            "docker system prune -af",
            "docker system df -v",
            "docker rm c1",
            "docker rm -f c1",
            "docker run -v data:/data busybox",
            "docker ps",
            "docker",
            "ls -v",
            "rm -rf /",
            "",
        ] {
            assert_eq!(w.doomed(cmd), None, "{cmd}");
        }
    }

    #[test]
    fn project_name_sources() {
        let mut w = World::new();
        w.files
            .insert("/srv/My App/docker-compose.yml", "services: {}\n");
        // Directory name, normalized.
        assert_eq!(w.doomed("docker compose down -v"), project("myapp"));
        // Top-level name: in the compose file.
        w.files.insert(
            "/srv/My App/docker-compose.yml",
            "name: fromfile\nservices:\n  db:\n    image: x\n",
        );
        assert_eq!(w.doomed("docker compose down -v"), project("fromfile"));
        // .env beats the file's name:.
        w.files.insert(
            "/srv/My App/.env",
            "# project\nCOMPOSE_PROJECT_NAME=dotenv\n",
        );
        assert_eq!(w.doomed("docker compose down -v"), project("dotenv"));
        // The environment beats .env.
        w.env.insert("COMPOSE_PROJECT_NAME", "exported");
        assert_eq!(w.doomed("docker compose down -v"), project("exported"));
        // -p beats everything.
        assert_eq!(w.doomed("docker compose -p flag down -v"), project("flag"));
        w.env.clear();
        // --env-file names another env file.
        w.files.insert(
            "/srv/My App/prod.env",
            "COMPOSE_PROJECT_NAME=copilotos-prod\n",
        );
        assert_eq!(
            w.doomed("docker compose --env-file prod.env down -v"),
            project("copilotos-prod")
        );
        // -f in another directory: that directory's .env and name.
        w.files.insert("/opt/stack/compose.yaml", "services: {}\n");
        assert_eq!(
            w.doomed("docker compose -f /opt/stack/compose.yaml down -v"),
            project("stack")
        );
        w.files
            .insert("/opt/stack/.env", "COMPOSE_PROJECT_NAME=stackenv\n");
        assert_eq!(
            w.doomed("docker-compose -f /opt/stack/compose.yaml down -v"),
            project("stackenv")
        );
        // --project-directory.
        assert_eq!(
            w.doomed("docker compose --project-directory /opt/stack -f x.yml down -v"),
            project("stackenv")
        );
        // Compose file found in a parent directory.
        let mut w = World::new();
        w.cwd = "/srv/app/sub/dir";
        w.files.insert("/srv/app/compose.yml", "services: {}\n");
        assert_eq!(w.doomed("docker compose down -v"), project("app"));
        // COMPOSE_FILE.
        w.env.insert(
            "COMPOSE_FILE",
            "/opt/other/docker-compose.yml:/opt/other/extra.yml",
        );
        assert_eq!(w.doomed("docker compose down -v"), project("other"));
    }

    #[test]
    fn summary_and_host() {
        let mut w = World::new();
        w.files
            .insert("/srv/My App/docker-compose.yml", "services: {}\n");
        let a = w
            .run("docker -H tcp://127.0.0.1:2375 compose -p Prod down -v")
            .unwrap()
            .unwrap();
        assert_eq!(a.docker_host.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(
            a.summary,
            "all volumes of compose project prod (project name from -p/--project-name)"
        );
        let a = w.run("docker volume rm a b").unwrap().unwrap();
        assert_eq!(a.summary, "volumes a, b");
    }

    #[test]
    fn contexts_are_refused_not_guessed() {
        let mut w = World::new();
        let e = w.run("docker --context remote volume rm x").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Refused);
        assert!(e.to_string().contains("DOCKER_HOST"), "{e}");
        w.env.insert("DOCKER_CONTEXT", "remote");
        assert!(w.run("docker compose down -v").is_err());
        // A harmless command is not affected.
        assert_eq!(w.doomed("docker volume ls"), None);
        w.env.insert("DOCKER_CONTEXT", "default");
        assert!(w.run("docker compose down -v").unwrap().is_some());
    }

    #[test]
    fn normalization_and_shell_function() {
        assert_eq!(normalize_project("My App"), "myapp");
        assert_eq!(normalize_project("_x-Y_1"), "x-y_1");
        assert_eq!(normalize_project("copilotos-prod"), "copilotos-prod");
        let f = shell_function("/usr/local/bin/drkit");
        assert!(
            f.contains("docker() { /usr/local/bin/drkit guard -- docker \"$@\"; }"),
            "{f}"
        );
        assert!(
            f.contains("docker-compose() { /usr/local/bin/drkit guard -- docker-compose \"$@\"; }")
        );
        assert!(shell_function("/opt/my tools/drkit").contains("'/opt/my tools/drkit' guard"));
    }
}
