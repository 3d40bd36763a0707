//! Compose command lines: `down -v` and `rm -v`, and the project name compose would use
//! (`-p`, `COMPOSE_PROJECT_NAME`, the `.env` file, the compose file's `name:`, the directory).

use std::path::{Path, PathBuf};

use drkit_core::{Error, Result};

use super::argv::{
    current_context, parse, unknown_global, Analysis, Context, Doomed, Flags, Parsed,
};
/// Which compose CLI: `docker-compose` 1.x, or the `docker compose` plugin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Compose {
    /// `docker-compose` (1.x, or the 2.x standalone binary).
    V1,
    /// `docker compose`.
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

/// `compose ARGS` (after `docker compose` or `docker-compose`): `down -v` and `rm -v`, with the
/// project name compose would use.
pub(super) fn compose(
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
    unknown_global(&g, &COMPOSE_GLOBAL, COMPOSE_GLOBAL_FLAGS, "compose")?;
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
    let context = g
        .last(&["-c", "--context"])
        .map(str::to_string)
        .or_else(|| {
            // docker-compose 1.x follows docker's contexts itself; `docker compose` got them
            // from docker above.
            (flavour == Compose::V1 && host.is_none())
                .then(|| {
                    (ctx.env)("DOCKER_CONTEXT")
                        .filter(|c| !c.is_empty())
                        .or_else(|| current_context(ctx, None))
                })
                .flatten()
        });
    if let Some(c) = context.filter(|c| c != "default") {
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

/// Compose's global options without a value (v1 and v2).
const COMPOSE_GLOBAL_FLAGS: &[&str] = &[
    "--verbose",
    "--no-ansi",
    "-v",
    "--version",
    "--tls",
    "--tlsverify",
    "--skip-hostname-check",
    "--compatibility",
    "--dry-run",
    "--all-resources",
    "-h",
    "--help",
];

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
    let pairs = drkit_core::config::parse_env_file(&text, &file.display().to_string()).ok()?;
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
