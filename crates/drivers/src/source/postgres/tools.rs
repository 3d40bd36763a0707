//! The PostgreSQL client programs (pg_dump, pg_restore, pg_dumpall, psql): where they are,
//! how they are run (here, or inside a container with `docker exec`), and their versions.

use std::path::PathBuf;

use drkit_core::{Error, Result};
use tokio::process::Command;

use super::conn::ConnParams;
use crate::process;

/// One of the client programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `pg_dump`
    PgDump,
    /// `pg_restore`
    PgRestore,
    /// `pg_dumpall`
    PgDumpall,
    /// `psql`
    Psql,
}

impl Tool {
    /// The program's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::PgDump => "pg_dump",
            Tool::PgRestore => "pg_restore",
            Tool::PgDumpall => "pg_dumpall",
            Tool::Psql => "psql",
        }
    }
}

/// Where the programs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exec {
    /// On this machine.
    Local,
    /// Inside a running container, through `docker exec`. The programs connect to `host` and
    /// `port` when given (as seen from inside the container), else to the url's.
    Docker {
        /// Container name or id.
        container: String,
        /// Host the programs connect to from inside the container.
        host: Option<String>,
        /// Port the programs connect to from inside the container.
        port: Option<u16>,
    },
}

/// The programs and how to run them.
#[derive(Debug, Clone)]
pub struct Tools {
    exec: Exec,
    paths: [String; 4],
}

/// A PostgreSQL version as `server_version_num` spells it (15.4 = 150004, 9.6.24 = 90624).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

impl Version {
    /// The major version: 15 for 15.4, 906 for 9.6.
    pub fn major(self) -> u32 {
        if self.0 >= 100_000 {
            self.0 / 10_000
        } else {
            self.0 / 100
        }
    }

    /// The major version as people write it: `15`, `9.6`.
    pub fn major_str(self) -> String {
        if self.0 >= 100_000 {
            self.major().to_string()
        } else {
            format!("{}.{}", self.0 / 10_000, (self.0 / 100) % 100)
        }
    }

    /// Read `15.4`, `9.6.24`, `16beta1`, `17devel`.
    pub fn parse(s: &str) -> Option<Version> {
        let numeric: String = s
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let parts: Vec<u32> = numeric
            .split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            [] => None,
            [major, ..] if *major >= 10 => {
                Some(Version(major * 10_000 + parts.get(1).copied().unwrap_or(0)))
            }
            [major, minor, rest @ ..] => Some(Version(
                major * 10_000 + minor * 100 + rest.first().copied().unwrap_or(0),
            )),
            [_] => None,
        }
    }

    /// Read the first line of `pg_dump --version`: `pg_dump (PostgreSQL) 15.4 (Debian ...)`.
    pub fn from_tool_output(out: &str) -> Option<(Version, String)> {
        let line = out.lines().next()?;
        let after = line.split(')').nth(1)?.trim();
        let token = after.split_whitespace().next()?;
        Version::parse(token).map(|v| (v, token.to_string()))
    }
}

impl Tools {
    /// Programs found in `bindir` (or on `PATH`), each overridable by its own path; run
    /// according to `exec`.
    pub fn new(exec: Exec, bindir: Option<PathBuf>, overrides: [Option<String>; 4]) -> Tools {
        let tools = [Tool::PgDump, Tool::PgRestore, Tool::PgDumpall, Tool::Psql];
        let paths = tools.map(|t| {
            let i = t as usize;
            overrides[i].clone().unwrap_or_else(|| match &bindir {
                Some(dir) => dir.join(t.name()).display().to_string(),
                None => t.name().to_string(),
            })
        });
        Tools { exec, paths }
    }

    /// How the programs are run.
    pub fn exec(&self) -> &Exec {
        &self.exec
    }

    /// The path (or name) of a program.
    pub fn path(&self, tool: Tool) -> &str {
        &self.paths[tool as usize]
    }

    /// The program for messages: `pg_dump (/usr/lib/postgresql/15/bin/pg_dump)`, with the
    /// container when run in one.
    pub fn describe(&self, tool: Tool) -> String {
        let path = self.path(tool);
        let base = if path == tool.name() {
            path.to_string()
        } else {
            format!("{} ({path})", tool.name())
        };
        match &self.exec {
            Exec::Local => base,
            Exec::Docker { container, .. } => format!("{base} in container {container}"),
        }
    }

    /// `local`, or `docker:<container>`, for the manifest.
    pub fn exec_label(&self) -> String {
        match &self.exec {
            Exec::Local => "local".into(),
            Exec::Docker { container, .. } => format!("docker:{container}"),
        }
    }

    /// The connection the programs use: the url's, or with the container's host and port.
    pub fn child_params(&self, params: &ConnParams) -> ConnParams {
        match &self.exec {
            Exec::Local => params.clone(),
            Exec::Docker { host, port, .. } => params.with_host_port(host.as_deref(), *port),
        }
    }

    /// A command running `tool args...`, with the password in the environment (never in the
    /// arguments). `stdin` says whether the program reads its standard input.
    pub fn command(
        &self,
        tool: Tool,
        args: &[String],
        password: Option<&str>,
        stdin: bool,
    ) -> Command {
        let path = self.path(tool);
        let mut cmd = match &self.exec {
            Exec::Local => {
                let mut c = Command::new(path);
                c.args(args);
                c
            }
            Exec::Docker { container, .. } => {
                let mut c = Command::new("docker");
                c.arg("exec");
                if stdin {
                    c.arg("-i");
                }
                if password.is_some() {
                    // `-e NAME` without a value copies NAME from docker's own environment.
                    c.args(["-e", "PGPASSWORD"]);
                }
                c.arg(container).arg(path).args(args);
                c
            }
        };
        match password {
            Some(pw) => {
                cmd.env("PGPASSWORD", pw);
            }
            None => {
                cmd.env_remove("PGPASSWORD");
            }
        }
        cmd
    }

    /// The version of `tool`, from `tool --version`.
    pub async fn version(&self, tool: Tool) -> Result<(Version, String)> {
        let mut cmd = self.command(tool, &["--version".to_string()], None, false);
        let out = process::output(&mut cmd, &self.describe(tool), 4096).await?;
        Version::from_tool_output(&out).ok_or_else(|| {
            Error::config(format!(
                "{} printed no PostgreSQL version ({:?}): is it really {}?",
                self.describe(tool),
                out.lines().next().unwrap_or(""),
                tool.name()
            ))
        })
    }
}

/// Fail when a program of major version `tool` cannot handle what needs major `need`
/// (`pg_dump` older than the server; `pg_restore` older than the archive).
pub fn check_version(
    tools: &Tools,
    tool: Tool,
    tool_version: &str,
    have: Version,
    need: Version,
    what: &str,
) -> Result<()> {
    if have.major() >= need.major() {
        return Ok(());
    }
    let fix = match tools.exec() {
        Exec::Local => format!(
            "install the PostgreSQL {} client and set `bindir` (or `{}`) in the job's source, or run it in the server's container with exec = {{ docker = \"<container>\" }}",
            need.major_str(),
            tool.name()
        ),
        Exec::Docker { container, .. } => format!(
            "container {container} has an older {}: point `bindir` (or `{}`) at a PostgreSQL {} client inside it, or use the server's own container",
            tool.name(),
            tool.name(),
            need.major_str()
        ),
    };
    Err(Error::config(format!(
        "{} is version {tool_version}, older than {what}: {} {} cannot handle it; {fix}",
        tools.describe(tool),
        tool.name(),
        have.major_str()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let cases = [
            (
                "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n",
                Some((150018, 15, "15")),
            ),
            (
                "pg_restore (PostgreSQL) 9.6.24\n",
                Some((90624, 906, "9.6")),
            ),
            ("pg_dump (PostgreSQL) 16beta1", Some((160000, 16, "16"))),
            ("pg_dump (PostgreSQL) 17devel", Some((170000, 17, "17"))),
            ("something else", None),
        ];
        for (out, want) in cases {
            let got = Version::from_tool_output(out).map(|(v, _)| (v.0, v.major(), v.major_str()));
            assert_eq!(got, want.map(|(a, b, c)| (a, b, c.to_string())), "{out}");
        }
    }

    #[test]
    fn version_check() {
        let tools = Tools::new(Exec::Local, None, Default::default());
        assert!(check_version(
            &tools,
            Tool::PgDump,
            "16.1",
            Version(160001),
            Version(150004),
            "the server"
        )
        .is_ok());
        assert!(check_version(
            &tools,
            Tool::PgDump,
            "15.1",
            Version(150001),
            Version(150009),
            "the server"
        )
        .is_ok());
        let e = check_version(
            &tools,
            Tool::PgDump,
            "14.2",
            Version(140002),
            Version(150004),
            "the PostgreSQL 15.4 server",
        )
        .unwrap_err();
        assert_eq!(e.kind(), drkit_core::ErrorKind::Config);
        let msg = e.to_string();
        assert!(
            msg.contains("pg_dump is version 14.2, older than the PostgreSQL 15.4 server"),
            "{msg}"
        );
        assert!(msg.contains("bindir"), "{msg}");
    }

    #[test]
    fn commands_keep_the_password_out_of_argv() {
        let local = Tools::new(Exec::Local, Some("/opt/pg/bin".into()), Default::default());
        let cmd = local.command(
            Tool::PgDump,
            &["--dbname=host='h'".into()],
            Some("s3cret"),
            false,
        );
        let std = cmd.as_std();
        assert_eq!(std.get_program(), "/opt/pg/bin/pg_dump");
        assert!(std
            .get_args()
            .all(|a| !a.to_string_lossy().contains("s3cret")));
        assert!(std
            .get_envs()
            .any(|(k, v)| k == "PGPASSWORD" && v == Some("s3cret".as_ref())));

        let docker = Tools::new(
            Exec::Docker {
                container: "db".into(),
                host: None,
                port: None,
            },
            None,
            [None, Some("/usr/bin/pg_restore".into()), None, None],
        );
        let cmd = docker.command(Tool::PgRestore, &["-x".into()], Some("s3cret"), true);
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "exec",
                "-i",
                "-e",
                "PGPASSWORD",
                "db",
                "/usr/bin/pg_restore",
                "-x"
            ]
        );
        assert_eq!(
            docker.describe(Tool::PgRestore),
            "pg_restore (/usr/bin/pg_restore) in container db"
        );
    }
}
