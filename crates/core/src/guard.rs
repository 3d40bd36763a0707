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
//! `volume prune [-a]`, `system prune --volumes`, `rm -v|--volumes` / `container rm -v`;
//! behind `sudo`, `env`, `nice`, `timeout`, `nohup`, `command`, `exec`, `time`, `stdbuf` and
//! `sh -c`. What cannot be followed fails safe: refused when a docker command may be behind
//! it. Every spelling decided is a row of the `spellings` test table.

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
/// docker command). An error: it might, but how cannot be told (e.g. `--context`, an option
/// of `sudo` or `env` the guard does not know): the guard refuses rather than guesses.
///
/// Wrappers are followed to the docker command they run, with their options and the
/// environment and directory they set: `sudo` (its options, `VAR=value`, the environment it
/// resets unless `-E`, `-D/--chdir`, `-i`), `env` (`-i`, `-u`, `-C`, `-S`, `VAR=value`),
/// `nice`, `timeout`, `nohup`, `command`, `exec`, `time`, `stdbuf`, and `sh|bash -c
/// 'one simple command'`.
pub fn analyse(argv: &[String], ctx: &Context<'_>) -> Result<Option<Analysis>> {
    let mut launch = Launch {
        args: argv.to_vec(),
        cwd: ctx.cwd.to_path_buf(),
        base: ctx.env,
        layers: Vec::new(),
        chroot: None,
        uncertain: Default::default(),
    };
    let mut steps = 0;
    loop {
        let Some(first) = launch.args.first() else {
            return Ok(None);
        };
        let program = base(first).to_string();
        if matches!(program.as_str(), "docker" | "docker-compose") {
            break;
        }
        steps += 1;
        let step = if steps > 64 {
            Err("too many nested wrappers".to_string())
        } else {
            match program.as_str() {
                "sudo" => sudo(&mut launch, ctx.read),
                "env" => env_wrapper(&mut launch),
                "nice" => simple_wrapper(&mut launch, &NICE, 0),
                "timeout" => simple_wrapper(&mut launch, &TIMEOUT, 1),
                "nohup" | "noglob" | "nocorrect" | "builtin" => {
                    simple_wrapper(&mut launch, &NOHUP, 0)
                }
                "command" => simple_wrapper(&mut launch, &COMMAND, 0),
                "exec" => simple_wrapper(&mut launch, &EXEC, 0),
                "time" => simple_wrapper(&mut launch, &TIME, 0),
                "stdbuf" => simple_wrapper(&mut launch, &STDBUF, 0),
                "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" => shell(&mut launch),
                _ => return Ok(None),
            }
        };
        match step {
            Ok(Flow::Continue) => {}
            Ok(Flow::NoCommand) => return Ok(None),
            Err(why) => {
                // Fail safe: what cannot be followed is refused when a docker command may be
                // behind it, and run otherwise.
                if argv.iter().any(|a| a.contains("docker")) {
                    return Err(Error::refused(format!(
                        "drkit guard cannot tell what `{}` runs ({why}); it may be a docker command that destroys volumes, so nothing was run: guard the docker command itself (drkit guard -- docker ...)",
                        shell_words(argv)
                    )));
                }
                return Ok(None);
            }
        }
    }
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

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// The command line, directory and environment a wrapped command runs with.
struct Launch<'a> {
    /// The wrapped command, wrappers consumed so far removed.
    args: Vec<String>,
    /// Its working directory.
    cwd: PathBuf,
    /// The guard's own environment.
    base: &'a dyn Fn(&str) -> Option<String>,
    /// What the wrappers did to the environment, innermost last.
    layers: Vec<Layer>,
    /// `sudo -R/--chroot`.
    chroot: Option<String>,
    /// Variables read that sudo may or may not have passed on (set for the guard, reset by
    /// sudo, not preserved explicitly).
    uncertain: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

#[derive(Default)]
struct Layer {
    /// The environment was cleared (`env -i`, `exec -c`; sudo's env_reset).
    cleared: Option<Clear>,
    /// Variables kept through the clear (`sudo --preserve-env=A,B`).
    kept: Vec<String>,
    /// Set (`Some`) or unset (`None`), in order.
    changes: Vec<(String, Option<String>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Clear {
    /// Everything is gone.
    All,
    /// sudo's env_reset: gone unless the sudoers policy keeps it.
    Sudo,
}

impl Launch<'_> {
    fn get(&self, k: &str) -> Option<String> {
        self.get_below(self.layers.len(), k)
    }

    fn get_below(&self, top: usize, k: &str) -> Option<String> {
        for (i, layer) in self.layers[..top].iter().enumerate().rev() {
            if let Some((_, v)) = layer.changes.iter().rev().find(|(n, _)| n == k) {
                return v.clone();
            }
            match layer.cleared {
                Some(_) if layer.kept.iter().any(|n| n == k) => {}
                Some(Clear::All) => return None,
                Some(Clear::Sudo) => {
                    if self.get_below(i, k).is_some() {
                        self.uncertain.borrow_mut().insert(k.to_string());
                    }
                    return None;
                }
                None => {}
            }
        }
        (self.base)(k)
    }

    fn layer(&mut self) -> &mut Layer {
        if self.layers.is_empty() {
            self.layers.push(Layer::default());
        }
        self.layers.last_mut().expect("a layer")
    }

    fn chdir(&mut self, dir: &str) {
        self.cwd = self.cwd.join(dir);
    }
}

/// What a wrapper does once its options are read.
enum Flow {
    /// `args` is now the command it runs.
    Continue,
    /// It runs no command (`--help`, `sudo -l`, `command -v`).
    NoCommand,
}

/// The options of a wrapper program.
struct WrapperSpec {
    /// Short options taking a value.
    short_value: &'static str,
    /// Short options without one.
    short_flag: &'static str,
    /// Long options taking a value (`--user root`, `--user=root`).
    long_value: &'static [&'static str],
    /// Long options without one (or with an optional `=value`).
    long_flag: &'static [&'static str],
    /// Options after which no command runs.
    no_command: &'static [&'static str],
}

/// One option: its canonical name (`-u`, `--user`) and value.
type Opt = (String, Option<String>);

/// Read the next option of `args` (after the program name has been removed); `Ok(None)` at
/// the first operand (which stays) or after `--` (which is removed).
fn next_opts(
    args: &mut Vec<String>,
    spec: &WrapperSpec,
) -> std::result::Result<Option<Vec<Opt>>, String> {
    let Some(a) = args.first().cloned() else {
        return Ok(None);
    };
    if a == "--" {
        args.remove(0);
        return Ok(None);
    }
    if let Some(long) = a.strip_prefix("--") {
        args.remove(0);
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        };
        // getopt_long: an unambiguous abbreviation counts.
        let all = spec.long_value.iter().chain(spec.long_flag).copied();
        let exact = all.clone().find(|o| o[2..] == *name);
        let full: &'static str = match exact {
            Some(o) => o,
            None => {
                let matches: Vec<&'static str> = all.filter(|o| o[2..].starts_with(name)).collect();
                match matches.as_slice() {
                    [one] => one,
                    [] => return Err(format!("unknown option --{name}")),
                    _ => return Err(format!("ambiguous option --{name}")),
                }
            }
        };
        if spec.long_value.contains(&full) {
            let value = match inline {
                Some(v) => v,
                None if !args.is_empty() => args.remove(0),
                None => return Err(format!("option {full} lacks its value")),
            };
            return Ok(Some(vec![(full.to_string(), Some(value))]));
        }
        return Ok(Some(vec![(full.to_string(), inline)]));
    }
    if a.len() < 2 || !a.starts_with('-') {
        return Ok(None);
    }
    args.remove(0);
    let mut out = Vec::new();
    let chars: Vec<char> = a[1..].chars().collect();
    for (j, c) in chars.iter().enumerate() {
        let name = format!("-{c}");
        if spec.short_value.contains(*c) {
            let tail: String = chars[j + 1..].iter().collect();
            let value = if !tail.is_empty() {
                tail
            } else if !args.is_empty() {
                args.remove(0)
            } else {
                return Err(format!("option {name} lacks its value"));
            };
            out.push((name, Some(value)));
            return Ok(Some(out));
        }
        if !spec.short_flag.contains(*c) {
            return Err(format!("unknown option {name}"));
        }
        out.push((name, None));
    }
    Ok(Some(out))
}

const NICE: WrapperSpec = WrapperSpec {
    short_value: "n",
    short_flag: "",
    long_value: &["--adjustment"],
    long_flag: &["--help", "--version"],
    no_command: &["--help", "--version"],
};
const TIMEOUT: WrapperSpec = WrapperSpec {
    short_value: "ks",
    short_flag: "v",
    long_value: &["--kill-after", "--signal"],
    long_flag: &[
        "--preserve-status",
        "--foreground",
        "--verbose",
        "--help",
        "--version",
    ],
    no_command: &["--help", "--version"],
};
const NOHUP: WrapperSpec = WrapperSpec {
    short_value: "",
    short_flag: "",
    long_value: &[],
    long_flag: &["--help", "--version"],
    no_command: &["--help", "--version"],
};
const COMMAND: WrapperSpec = WrapperSpec {
    short_value: "",
    short_flag: "pvV",
    long_value: &[],
    long_flag: &[],
    no_command: &["-v", "-V"],
};
const EXEC: WrapperSpec = WrapperSpec {
    short_value: "a",
    short_flag: "cl",
    long_value: &[],
    long_flag: &[],
    no_command: &[],
};
const TIME: WrapperSpec = WrapperSpec {
    short_value: "fo",
    short_flag: "apqv",
    long_value: &["--format", "--output"],
    long_flag: &[
        "--append",
        "--portability",
        "--quiet",
        "--verbose",
        "--help",
        "--version",
    ],
    no_command: &["--help", "--version"],
};
const STDBUF: WrapperSpec = WrapperSpec {
    short_value: "ioe",
    short_flag: "",
    long_value: &["--input", "--output", "--error"],
    long_flag: &["--help", "--version"],
    no_command: &["--help", "--version"],
};

/// A wrapper whose options change nothing the guard looks at (`exec -c` aside), followed by
/// `operands` operands of its own (timeout's duration), then the command.
fn simple_wrapper(
    l: &mut Launch<'_>,
    spec: &WrapperSpec,
    operands: usize,
) -> std::result::Result<Flow, String> {
    let program = base(&l.args.remove(0)).to_string();
    loop {
        // nice's legacy `-5` / `--5` adjustment.
        if program == "nice" {
            if let Some(a) = l.args.first() {
                let digits = a.trim_start_matches('-').trim_start_matches(['+', '-']);
                if a.starts_with('-')
                    && !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                {
                    l.args.remove(0);
                    continue;
                }
            }
        }
        let Some(opts) = next_opts(&mut l.args, spec)? else {
            break;
        };
        for (name, _) in opts {
            if spec.no_command.contains(&name.as_str()) {
                return Ok(Flow::NoCommand);
            }
            if program == "exec" && name == "-c" {
                l.layers.push(Layer {
                    cleared: Some(Clear::All),
                    ..Default::default()
                });
            }
        }
    }
    for _ in 0..operands {
        if l.args.is_empty() {
            return Ok(Flow::NoCommand);
        }
        l.args.remove(0);
    }
    Ok(Flow::Continue)
}

const ENV: WrapperSpec = WrapperSpec {
    short_value: "uCSP",
    short_flag: "i0v",
    long_value: &["--unset", "--chdir", "--split-string"],
    long_flag: &[
        "--ignore-environment",
        "--null",
        "--debug",
        "--default-signal",
        "--ignore-signal",
        "--block-signal",
        "--list-signal-handling",
        "--help",
        "--version",
    ],
    no_command: &["--help", "--version"],
};

/// `env [-i] [-u NAME] [-C DIR] [-S STRING] [NAME=VALUE]... COMMAND`.
fn env_wrapper(l: &mut Launch<'_>) -> std::result::Result<Flow, String> {
    l.args.remove(0);
    l.layers.push(Layer::default());
    loop {
        if l.args.first().is_some_and(|a| a == "-") {
            l.args.remove(0);
            *l.layer() = Layer {
                cleared: Some(Clear::All),
                ..Default::default()
            };
            continue;
        }
        let Some(opts) = next_opts(&mut l.args, &ENV)? else {
            break;
        };
        for (name, value) in opts {
            let value = value.unwrap_or_default();
            match name.as_str() {
                n if ENV.no_command.contains(&n) => return Ok(Flow::NoCommand),
                "-i" | "--ignore-environment" => {
                    *l.layer() = Layer {
                        cleared: Some(Clear::All),
                        ..Default::default()
                    }
                }
                "-u" | "--unset" => l.layer().changes.push((value, None)),
                "-C" | "--chdir" => l.chdir(&value),
                "-S" | "--split-string" => {
                    let words = split_env_string(&value, &|k| l.get(k))?;
                    l.args.splice(0..0, words);
                }
                "-P" => {} // the PATH to look the command up in
                _ => {}
            }
        }
    }
    assignments(l);
    Ok(Flow::Continue)
}

/// `NAME=VALUE` operands before the command, into the innermost layer.
fn assignments(l: &mut Launch<'_>) {
    while let Some(a) = l.args.first() {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('/') => {
                let change = (k.to_string(), Some(v.to_string()));
                l.args.remove(0);
                l.layer().changes.push(change);
            }
            _ => break,
        }
    }
}

const SUDO: WrapperSpec = WrapperSpec {
    short_value: "ugCDhpRTUrtac",
    short_flag: "AbBEeHiKklnNPSsVv",
    long_value: &[
        "--user",
        "--group",
        "--close-from",
        "--chdir",
        "--host",
        "--prompt",
        "--chroot",
        "--command-timeout",
        "--other-user",
        "--role",
        "--type",
        "--auth-type",
        "--login-class",
    ],
    long_flag: &[
        "--askpass",
        "--background",
        "--bell",
        "--preserve-env",
        "--edit",
        "--set-home",
        "--login",
        "--remove-timestamp",
        "--reset-timestamp",
        "--list",
        "--non-interactive",
        "--preserve-groups",
        "--stdin",
        "--shell",
        "--version",
        "--validate",
        "--no-update",
        "--help",
    ],
    no_command: &[
        "-e",
        "--edit",
        "-l",
        "--list",
        "-V",
        "--version",
        "--help",
        "-K",
    ],
};

/// `sudo [options] [NAME=VALUE]... COMMAND`: the environment is reset (unless `-E`), `HOME`
/// is the target user's; `-D` changes directory, `-i` starts in the target's home.
fn sudo(
    l: &mut Launch<'_>,
    read: &dyn Fn(&Path) -> Option<String>,
) -> std::result::Result<Flow, String> {
    l.args.remove(0);
    let mut user = "root".to_string();
    let mut preserve_all = false;
    let mut kept: Vec<String> = Vec::new();
    let mut chdir: Option<String> = None;
    let mut login = false;
    while let Some(opts) = next_opts(&mut l.args, &SUDO)? {
        for (name, value) in opts {
            match name.as_str() {
                n if SUDO.no_command.contains(&n) => return Ok(Flow::NoCommand),
                "-u" | "--user" => user = value.unwrap_or_default(),
                "-E" => preserve_all = true,
                "--preserve-env" => match value {
                    None => preserve_all = true,
                    Some(list) => kept.extend(list.split(',').map(str::to_string)),
                },
                "-D" | "--chdir" => chdir = value,
                "-R" | "--chroot" => l.chroot = value,
                "-i" | "--login" => login = true,
                _ => {}
            }
        }
    }
    let home = user_home(read, &user);
    let mut layer = Layer::default();
    if !preserve_all || login {
        layer.cleared = Some(Clear::Sudo);
        layer.kept = kept;
        layer.changes.push(("HOME".into(), home.clone()));
    }
    l.layers.push(layer);
    if login {
        match &home {
            Some(h) => l.cwd = PathBuf::from(h),
            None => return Err(format!("the home directory of user {user:?} is unknown")),
        }
    }
    if let Some(d) = chdir {
        l.chdir(&d);
    }
    assignments(l);
    Ok(Flow::Continue)
}

/// The home directory of `user` (a name or `#UID`), from /etc/passwd.
fn user_home(read: &dyn Fn(&Path) -> Option<String>, user: &str) -> Option<String> {
    let passwd = read(Path::new("/etc/passwd"));
    let uid = user.strip_prefix('#');
    for line in passwd.as_deref().unwrap_or("").lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && (Some(f[2]) == uid || (uid.is_none() && f[0] == user)) {
            return Some(f[5].to_string());
        }
    }
    (user == "root" || user == "#0").then(|| "/root".to_string())
}

/// `sh -c 'docker volume rm x'`: a script that is one simple command (no expansions,
/// redirections, pipes, lists) is that command; anything else cannot be followed.
fn shell(l: &mut Launch<'_>) -> std::result::Result<Flow, String> {
    l.args.remove(0);
    let mut script = None;
    while let Some(a) = l.args.first().cloned() {
        if a == "--" || !a.starts_with(['-', '+']) {
            break;
        }
        l.args.remove(0);
        if a.starts_with('-') && a[1..].contains('c') {
            script = Some(());
        }
    }
    if script.is_none() {
        // A script file or standard input: not followed.
        return Ok(Flow::NoCommand);
    }
    let Some(text) = l.args.first().cloned() else {
        return Ok(Flow::NoCommand);
    };
    if text.contains([
        '$', '`', ';', '&', '|', '<', '>', '(', ')', '\n', '*', '?', '[', '{', '~',
    ]) {
        return Err("a shell script is not analysed".into());
    }
    let words = split_env_string(&text, &|_| None)?;
    l.args = words;
    assignments(l);
    Ok(Flow::Continue)
}

/// Split a string into words as `env -S` does: blanks separate words, `'...'` is literal,
/// `"..."` allows `\"`, `\\`, `\$`; outside quotes `\` escapes the next character, `\_` is
/// a blank inside a word; `${NAME}` expands; `#` starts a comment, `\c` ends the string.
fn split_env_string(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('\\') if matches!(chars.peek(), Some('\'' | '\\')) => {
                            cur.push(chars.next().expect("peeked"))
                        }
                        Some(c) => cur.push(c),
                        None => return Err("an unterminated quote in a split string".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('_') => cur.push(' '),
                            Some(c @ ('"' | '\\' | '$' | '#' | ' ')) => cur.push(c),
                            Some('c') => return Err("\\c inside quotes".into()),
                            Some(c) => cur.push(escape(c)?),
                            None => return Err("an unterminated quote in a split string".into()),
                        },
                        Some('$') => cur.push_str(&expand(&mut chars, env)?),
                        Some(c) => cur.push(c),
                        None => return Err("an unterminated quote in a split string".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('_') => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                Some('c') => break,
                Some(c @ ('"' | '\'' | '\\' | '$' | '#' | ' ')) => {
                    in_word = true;
                    cur.push(c)
                }
                Some(c) => {
                    in_word = true;
                    cur.push(escape(c)?)
                }
                None => return Err("a split string ends with a backslash".into()),
            },
            '$' => {
                in_word = true;
                cur.push_str(&expand(&mut chars, env)?);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn escape(c: char) -> std::result::Result<char, String> {
    Ok(match c {
        'f' => '\x0c',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'v' => '\x0b',
        other => return Err(format!("the escape \\{other} in a split string")),
    })
}

fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    if chars.next() != Some('{') {
        return Err("a `$` not followed by {NAME} in a split string".into());
    }
    let mut name = String::new();
    for c in chars.by_ref() {
        if c == '}' {
            return Ok(env(&name).unwrap_or_default());
        }
        if !(c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("${{{name}{c}...}} in a split string"));
        }
        name.push(c);
    }
    Err("an unterminated ${ in a split string".into())
}

/// Words for a message, quoted where a shell would need it.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
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
fn unknown_global(
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
fn current_context(ctx: &Context<'_>, config_dir: Option<&str>) -> Option<String> {
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
            self.run_argv(&words(cmd))
        }
        fn run_argv(&self, argv: &[String]) -> Result<Option<Analysis>> {
            let env = |k: &str| self.env.get(k).map(|v| v.to_string());
            let read = |p: &Path| self.files.get(p.to_str().unwrap()).map(|v| v.to_string());
            analyse(
                argv,
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

    /// What the guard decides for a command line.
    #[derive(Debug)]
    enum Want {
        /// It destroys this.
        Destroys(Doomed),
        /// It destroys nothing: run at once.
        Runs,
        /// Refused without asking the engine; the message contains this.
        Refused(&'static str),
    }

    /// Split a test command line on blanks; `'...'` groups words.
    fn words(cmd: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let (mut quoted, mut in_word) = (false, false);
        for c in cmd.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    in_word = true;
                }
                ' ' if !quoted => {
                    if in_word {
                        out.push(std::mem::take(&mut cur));
                    }
                    in_word = false;
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            out.push(cur);
        }
        out
    }

    /// THE table of spellings: every command line the guard must refuse or let through,
    /// with what it decides. Each miss found in the field becomes a row here.
    #[test]
    fn spellings() {
        use Want::{Destroys, Refused, Runs};
        let mut w = World::new();
        w.files
            .insert("/srv/My App/docker-compose.yml", "services: {}\n");
        w.files.insert("/opt/stack/compose.yaml", "services: {}\n");
        w.files.insert(
            "/home/u/.docker/config.json",
            r#"{"currentContext": "remote"}"#,
        );
        w.files.insert(
            "/home/d/.docker/config.json",
            r#"{"currentContext": "default"}"#,
        );
        w.files.insert(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nops:x:1000:1000::/opt/stack:/bin/sh\n",
        );
        let project = |p: &str| Destroys(Doomed::ProjectVolumes { project: p.into() });
        let named = |v: &[&str]| Destroys(Doomed::Named(v.iter().map(|s| s.to_string()).collect()));
        let unused = |all: bool, f: &[&str]| {
            Destroys(Doomed::Unused {
                all,
                filters: f.iter().map(|s| s.to_string()).collect(),
            })
        };
        let anon = |p: &str, services: &[&str], running_too: bool| {
            Destroys(Doomed::ProjectAnonymous {
                project: p.into(),
                services: services.iter().map(|s| s.to_string()).collect(),
                running_too,
            })
        };
        let ctrs = |c: &[&str]| {
            Destroys(Doomed::ContainerAnonymous(
                c.iter().map(|s| s.to_string()).collect(),
            ))
        };
        let full_id = "3f2a9c0d41b7e8f5a6c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1";
        let rm_full_id = format!("docker rm -v {full_id}");
        // (environment "K=V K2=V2", command line, decision)
        let cases: Vec<(&str, &str, Want)> = vec![
            // compose down -v, both flavours, flags anywhere.
            ("", "docker compose down -v", project("myapp")),
            ("", "docker compose down --volumes", project("myapp")),
            ("", "docker compose down --volumes=true", project("myapp")),
            ("", "docker compose down --remove-orphans -v", project("myapp")),
            ("", "docker compose down -v --rmi all -t 3", project("myapp")),
            ("", "docker compose down -vt 5", project("myapp")),
            ("", "docker compose down -t5 -v", project("myapp")),
            ("", "docker-compose down -v", project("myapp")),
            ("", "/usr/local/bin/docker-compose down --volumes", project("myapp")),
            ("", "docker compose -p prod down -v", project("prod")),
            ("", "docker compose --project-name=Prod.X down -v", project("prodx")),
            ("", "docker compose -pprod down -v", project("prod")),
            ("", "docker-compose --project-name prod -f other.yml down -v", project("prod")),
            ("", "docker -H unix:///x.sock compose down -v", project("myapp")),
            ("", "docker --log-level debug compose --ansi never down -v", project("myapp")),
            ("", "docker-compose --verbose --no-ansi down -v", project("myapp")),
            // compose rm -v: the services named are a union.
            ("", "docker compose rm -v", anon("myapp", &[], false)),
            ("", "docker compose rm -fsv db", anon("myapp", &["db"], true)),
            ("", "docker-compose rm -f -v web", anon("myapp", &["web"], false)),
            ("", "docker-compose -p P rm -v -f svc1 svc2", anon("p", &["svc1", "svc2"], false)),
            // volume rm, prune, system prune --volumes.
            ("", "docker volume rm a b", named(&["a", "b"])),
            ("", "docker volume rm -f a", named(&["a"])),
            ("", "docker volume remove a", named(&["a"])),
            ("", "docker volume prune", unused(false, &[])),
            ("", "docker volume prune -f", unused(false, &[])),
            ("", "docker volume prune -a -f", unused(true, &[])),
            ("", "docker volume prune -af", unused(true, &[])),
            ("", "docker volume prune --all --filter label=x=y", unused(true, &["label=x=y"])),
            ("", "docker volume prune --filter=label=a", unused(false, &["label=a"])),
            ("", "docker system prune --volumes", unused(false, &[])),
            ("", "docker system prune -f --volumes", unused(false, &[])),
            ("", "docker system prune -af --volumes", unused(true, &[])),
            // rm -v: containers by name, short id or full id (resolved by the engine).
            ("", "docker rm -fv c1", ctrs(&["c1"])),
            ("", "docker rm -fv 3f2a9c0d41b7", ctrs(&["3f2a9c0d41b7"])),
            ("", &rm_full_id, ctrs(&[full_id])),
            ("", "docker rm -v /c1", ctrs(&["/c1"])),
            ("", "docker container rm --volumes c1 c2", ctrs(&["c1", "c2"])),
            ("", "docker container remove -v c1", ctrs(&["c1"])),
            // env: its options are skipped with their values; -i, -u, -C, -S are followed.
            ("", "env COMPOSE_PROJECT_NAME=fromenv docker compose down -v", project("fromenv")),
            ("", "env -u HOME docker-compose down -v", project("myapp")),
            ("", "env -uHOME docker-compose down -v", project("myapp")),
            ("", "env --unset HOME docker compose down -v", project("myapp")),
            ("", "env --unset=HOME docker compose down -v", project("myapp")),
            ("", "env -u HOME -u PATH -i -0 -v docker volume rm a", named(&["a"])),
            ("", "/usr/bin/env -P /usr/bin -- /usr/bin/docker volume rm a", named(&["a"])),
            ("", "env - docker volume rm a", named(&["a"])),
            ("COMPOSE_PROJECT_NAME=exported", "env -i docker compose down -v", project("myapp")),
            ("COMPOSE_PROJECT_NAME=exported", "env -u COMPOSE_PROJECT_NAME docker compose down -v", project("myapp")),
            ("COMPOSE_PROJECT_NAME=exported", "env docker compose down -v", project("exported")),
            ("", "env -C /opt/stack docker compose down -v", project("stack")),
            ("", "env --chdir=/opt/stack docker-compose down -v", project("stack")),
            ("", "env -S 'docker-compose -p prod down -v'", project("prod")),
            ("", "env -S 'COMPOSE_PROJECT_NAME=split docker compose down -v'", project("split")),
            ("", "env '-S-u HOME docker volume rm a'", named(&["a"])),
            ("", "env --split-string='docker volume rm \"my vol\"'", named(&["my vol"])),
            ("V=v1", "env -S 'docker volume rm ${V}'", named(&["v1"])),
            ("", "env -S 'docker volume rm $V'", Refused("cannot tell")),
            ("", "env -X docker volume rm a", Refused("unknown option -X")),
            ("", "env --frobnicate docker volume rm a", Refused("cannot tell")),
            ("", "env -u", Runs),
            ("", "env -X ls", Runs),
            ("", "env --help docker volume rm a", Runs),
            // sudo: its options are skipped with their values; the environment is reset.
            ("", "sudo -E docker compose down -v", project("myapp")),
            ("", "sudo --user root docker volume rm VOL", named(&["VOL"])),
            ("", "sudo --user=root docker volume rm VOL", named(&["VOL"])),
            ("", "sudo --us root docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -u root docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -uroot docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -Eu root docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -u '#0' -g docker docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -C 3 -h host -p prompt: -T 10 -U bob -r role -t type docker volume rm VOL", named(&["VOL"])),
            ("", "sudo --group=docker --close-from=3 --host=h --prompt=x --command-timeout=5 --other-user=bob --role=r --type=t -- docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -n -b -H -P -S -k docker volume rm VOL", named(&["VOL"])),
            ("", "sudo -D /opt/stack docker compose down -v", project("stack")),
            ("", "sudo --chdir /opt/stack docker-compose down -v", project("stack")),
            ("", "sudo -i -u ops docker compose down -v", project("stack")),
            ("", "sudo COMPOSE_PROJECT_NAME=x docker compose down -v", project("x")),
            ("COMPOSE_PROJECT_NAME=exported", "sudo docker compose down -v", Refused("sudoers")),
            ("COMPOSE_PROJECT_NAME=exported", "sudo -E docker compose down -v", project("exported")),
            ("COMPOSE_PROJECT_NAME=exported", "sudo --preserve-env docker compose down -v", project("exported")),
            ("COMPOSE_PROJECT_NAME=exported", "sudo --preserve-env=COMPOSE_PROJECT_NAME docker compose down -v", project("exported")),
            ("COMPOSE_PROJECT_NAME=exported", "sudo COMPOSE_PROJECT_NAME=other docker compose down -v", project("other")),
            ("COMPOSE_PROJECT_NAME=exported", "sudo docker volume rm a", named(&["a"])),
            ("DOCKER_HOST=tcp://10.0.0.1:2375", "sudo docker volume rm a", Refused("DOCKER_HOST")),
            ("DOCKER_HOST=tcp://10.0.0.1:2375", "sudo -E docker volume rm a", named(&["a"])),
            ("", "sudo -R /jail docker volume rm a", Refused("chroot")),
            ("", "sudo --frobnicate docker volume rm a", Refused("cannot tell")),
            ("", "sudo -u", Runs),
            ("", "sudo -l docker volume rm a", Runs),
            ("", "sudo -e /etc/docker/daemon.json", Runs),
            ("", "sudo ls -v", Runs),
            // Other wrappers.
            ("", "nice -n 5 docker volume rm a", named(&["a"])),
            ("", "nice -n5 docker volume rm a", named(&["a"])),
            ("", "nice --adjustment=5 docker volume rm a", named(&["a"])),
            ("", "nice -5 docker volume rm a", named(&["a"])),
            ("", "nice docker volume rm a", named(&["a"])),
            ("", "timeout 10 docker volume rm a", named(&["a"])),
            ("", "timeout -s KILL -k 5 --foreground 10s docker-compose down -v", project("myapp")),
            ("", "timeout --signal=TERM 10 docker volume rm a", named(&["a"])),
            ("", "nohup docker volume rm a", named(&["a"])),
            ("", "command docker volume rm a", named(&["a"])),
            ("", "command -p docker volume rm a", named(&["a"])),
            ("", "command -v docker", Runs),
            ("", "exec docker volume rm a", named(&["a"])),
            ("", "exec -a name docker volume rm a", named(&["a"])),
            ("COMPOSE_PROJECT_NAME=exported", "exec -c docker compose down -v", project("myapp")),
            ("", "time docker volume rm a", named(&["a"])),
            ("", "time -p docker volume rm a", named(&["a"])),
            ("", "time -f %e -o /tmp/t docker volume rm a", named(&["a"])),
            ("", "stdbuf -oL -e 0 docker volume rm a", named(&["a"])),
            ("", "sudo env -u HOME nice -n 5 timeout 60 docker-compose down -v", project("myapp")),
            ("", "sh -c 'docker volume rm a'", named(&["a"])),
            ("", "bash -ec 'docker compose -p prod down -v'", project("prod")),
            ("", "bash -c 'docker volume rm $(docker volume ls -q)'", Refused("shell script")),
            ("", "sh -c 'echo out; echo err >&2; exit 7'", Runs),
            ("", "sh script.sh", Runs),
            // Options docker or compose do not have: refused when a destructive word follows.
            ("", "docker --frob x volume rm a", Refused("does not know")),
            ("", "docker-compose --frob x down -v", Refused("does not know")),
            ("", "docker --frob volume ls", Runs),
            ("", "docker -D --tls volume rm a", named(&["a"])),
            // Contexts: not followed, refused for destructive commands.
            ("", "docker --context remote volume rm x", Refused("DOCKER_HOST")),
            ("", "docker -c remote compose down -v", Refused("context")),
            ("", "docker-compose --context remote down -v", Refused("context")),
            ("DOCKER_CONTEXT=remote", "docker compose down -v", Refused("context")),
            ("DOCKER_CONTEXT=remote", "docker-compose down -v", Refused("context")),
            ("DOCKER_CONTEXT=remote", "env -u DOCKER_CONTEXT docker volume rm x", named(&["x"])),
            ("DOCKER_CONTEXT=remote", "docker volume ls", Runs),
            ("DOCKER_CONTEXT=default", "docker compose down -v", project("myapp")),
            ("HOME=/home/u", "docker volume rm x", Refused("context \"remote\"")),
            ("HOME=/home/u", "docker-compose down -v", Refused("context \"remote\"")),
            ("HOME=/home/u", "env DOCKER_CONFIG=/nowhere docker volume rm x", named(&["x"])),
            ("HOME=/home/u", "docker -H unix:///x.sock volume rm x", named(&["x"])),
            ("HOME=/home/u DOCKER_HOST=unix:///y.sock", "docker volume rm x", named(&["x"])),
            ("HOME=/home/d", "docker volume rm x", named(&["x"])),
            ("", "env HOME=/home/u docker volume rm x", Refused("context")),
            // Harmless: run at once.
            ("", "docker compose down", Runs),
            ("", "docker compose down --volumes=false", Runs),
            ("", "docker compose down --rmi local", Runs),
            ("", "docker-compose down -t 10", Runs),
            ("", "docker-compose -p drkitnosuchproject down", Runs),
            ("", "docker-compose -v", Runs),
            ("", "docker-compose -v down", Runs),
            ("", "docker compose --dry-run down -v", Runs),
            ("", "docker compose down --help -v", Runs),
            ("", "docker compose up -d", Runs),
            ("", "docker compose rm -f", Runs),
            ("", "docker compose logs -v", Runs),
            ("", "docker compose ps", Runs),
            ("", "docker volume ls", Runs),
            ("", "docker volume ls --format {{.Driver}}", Runs),
            ("", "docker volume inspect x", Runs),
            ("", "docker volume create x", Runs),
            ("", "docker volume rm", Runs),
            ("", "docker volume rm --help", Runs),
            ("", "docker system prune", Runs),
            ("", "docker system prune -af", Runs),
            ("", "docker system df -v", Runs),
            ("", "docker rm c1", Runs),
            ("", "docker rm -f c1", Runs),
            ("", "docker run -v data:/data busybox", Runs),
            ("", "docker --version volume rm x", Runs),
            ("", "docker ps", Runs),
            ("", "docker", Runs),
            ("", "ls -v", Runs),
            ("", "rm -rf /", Runs),
            ("", "", Runs),
        ];
        let mut failures = Vec::new();
        for (env, cmd, want) in &cases {
            let mut world = World {
                env: w.env.clone(),
                files: w.files.clone(),
                cwd: w.cwd,
            };
            for pair in env.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("K=V");
                world.env.insert(k, v);
            }
            let got = world.run_argv(&words(cmd));
            let ok = match (want, &got) {
                (Destroys(d), Ok(Some(a))) => a.doomed == *d,
                (Runs, Ok(None)) => true,
                (Refused(part), Err(e)) => {
                    e.kind() == crate::ErrorKind::Refused && e.to_string().contains(part)
                }
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "[{env}] {cmd}: want {want:?}, got {:?}",
                    got.map(|a| a.map(|a| a.doomed))
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
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
        assert_eq!(a.docker_host, None, "the guard's own DOCKER_HOST");
        // A wrapper that changes DOCKER_HOST changes the engine the guard asks.
        let a = w
            .run("env DOCKER_HOST=tcp://10.1.1.1:2375 docker volume rm a")
            .unwrap()
            .unwrap();
        assert_eq!(a.docker_host.as_deref(), Some("tcp://10.1.1.1:2375"));
        w.env.insert("DOCKER_HOST", "tcp://10.2.2.2:2375");
        let a = w
            .run("env -u DOCKER_HOST docker volume rm a")
            .unwrap()
            .unwrap();
        assert_eq!(a.docker_host.as_deref(), Some(DEFAULT_SOCKET));
        let a = w.run("docker volume rm a").unwrap().unwrap();
        assert_eq!(a.docker_host, None);
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
