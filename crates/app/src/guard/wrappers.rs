//! The wrappers the guard follows to the docker command they run: `sudo`, `env`, `nice`,
//! `timeout`, `nohup`, `command`, `exec`, `time`, `stdbuf` and `sh -c`, each with its
//! options, and the environment and directory it gives the command.

use std::path::{Path, PathBuf};

use drkit_core::{Error, Result};

use super::argv::{base, Context};
use super::shell::{shell_words, split_env_string};

/// Follow the wrappers of `argv` to the docker command they run. `Ok(None)`: no docker
/// command runs (another program, `sudo -l`, `command -v` ...). A wrapper the guard cannot
/// follow is refused when a docker command may be behind it, and runs otherwise.
pub(super) fn follow<'a>(argv: &[String], ctx: &Context<'a>) -> Result<Option<Launch<'a>>> {
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
    Ok(Some(launch))
}

/// The command line, directory and environment a wrapped command runs with.
pub(super) struct Launch<'a> {
    /// The wrapped command, wrappers consumed so far removed.
    pub(super) args: Vec<String>,
    /// Its working directory.
    pub(super) cwd: PathBuf,
    /// The guard's own environment.
    base: &'a dyn Fn(&str) -> Option<String>,
    /// What the wrappers did to the environment, innermost last.
    layers: Vec<Layer>,
    /// `sudo -R/--chroot`.
    pub(super) chroot: Option<String>,
    /// Variables read that sudo may or may not have passed on (set for the guard, reset by
    /// sudo, not preserved explicitly).
    pub(super) uncertain: std::cell::RefCell<std::collections::BTreeSet<String>>,
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
    /// A variable of the environment the command runs with.
    pub(super) fn get(&self, k: &str) -> Option<String> {
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
