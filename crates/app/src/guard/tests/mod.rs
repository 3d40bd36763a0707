//! The argv analysis against a made-up world (environment, files, directory): the table of
//! spellings (`spellings.rs`), the project-name sources, summaries and the engine asked.

use std::collections::HashMap;
use std::path::Path;

use drkit_core::Result;

use super::argv::DEFAULT_SOCKET;
use super::{analyse, normalize_project, shell_function, Analysis, Context, Doomed};

mod policy;
mod spellings;

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
    assert!(f.contains("docker-compose() { /usr/local/bin/drkit guard -- docker-compose \"$@\"; }"));
    assert!(shell_function("/opt/my tools/drkit").contains("'/opt/my tools/drkit' guard"));
}
