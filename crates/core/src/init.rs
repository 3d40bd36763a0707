//! `drkit init`: from what the Docker engine runs (an [`Inventory`], gathered by
//! `drkit_drivers::docker::inventory`), a commented `drkit.toml` that protects each compose
//! deployment. Pure: the inventory and the options in, the file's text out, so the rules are
//! tested with tables and the text is checked by the config loader itself.
//!
//! The rules:
//! - a PostgreSQL or MongoDB service gets a logical dump job (a copy of the files of a
//!   running server is not a consistent backup), with a drill, and the volume that holds its
//!   data is `covers`-ed by that job instead of being copied;
//! - every other named volume of a project gets a `docker-volume` job by compose identity,
//!   with `stop_containers = true` when a running container writes to it;
//! - credentials are `${VAR}` placeholders, never values: the variables are listed at the top;
//! - volumes that look like an earlier project name's copy are listed as comments.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// What the engine runs, as far as `init` cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Where the engine was reached (for the header comment), without secrets.
    pub engine: String,
    /// Compose projects, by name.
    pub projects: Vec<Project>,
    /// Warnings about volumes that look like an earlier project name's copy (as `doctor`).
    pub orphans: Vec<String>,
}

/// One compose project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Project {
    /// Its name (the `com.docker.compose.project` label).
    pub name: String,
    /// Its services' containers.
    pub services: Vec<Service>,
    /// Its named volumes.
    pub volumes: Vec<Volume>,
}

/// One container of a compose service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// The service's name (the `com.docker.compose.service` label).
    pub name: String,
    /// The container's name (`shop_db_1` with docker-compose 1, `shop-db-1` with 2).
    pub container: String,
    /// The image, as the container was created from it (`postgres:15`).
    pub image: String,
    /// Whether it runs.
    pub running: bool,
    /// Its volume mounts.
    pub mounts: Vec<Mount>,
    /// The names (never the values) of its environment variables.
    pub env_names: Vec<String>,
    /// How this host reaches the service's database port, when it has one: a published
    /// port (`127.0.0.1`, host port) or the container's address on its network.
    pub address: Option<Address>,
}

/// Where a service listens, as seen from the host running drkit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Host or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// A published port (stable), or the container's network address (changes when the
    /// container is created again).
    pub published: bool,
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The Docker volume's name.
    pub volume: String,
    /// Where it is mounted in the container.
    pub destination: String,
    /// Mounted read-write.
    pub rw: bool,
}

/// A named volume of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The Docker volume's name (`shop_uploads`).
    pub name: String,
    /// Its key in the compose file (`uploads`, the `com.docker.compose.volume` label).
    pub key: String,
    /// What it holds, in bytes, when the engine says.
    pub size: Option<u64>,
}

/// What kind of database a service runs, judged by its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// PostgreSQL (also PostGIS and TimescaleDB images).
    Postgres,
    /// MongoDB.
    Mongo,
}

impl Database {
    /// The database an image runs, by the last part of its repository name.
    pub fn of_image(image: &str) -> Option<Database> {
        let repo = image.split('@').next().unwrap_or(image);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        let last = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
        if last.starts_with("postgres") || last.starts_with("postgis") || last.contains("timescale")
        {
            Some(Database::Postgres)
        } else if last.starts_with("mongo") {
            Some(Database::Mongo)
        } else {
            None
        }
    }

    /// Whether a mount at `destination` holds this server's data files.
    fn holds_data(self, destination: &str) -> bool {
        let d = destination.trim_end_matches('/');
        match self {
            Database::Postgres => {
                d == "/var/lib/postgresql" || d.starts_with("/var/lib/postgresql/")
            }
            Database::Mongo => matches!(d, "/data/db" | "/data/configdb"),
        }
    }

    /// The server's port inside its container.
    pub fn port(self) -> u16 {
        match self {
            Database::Postgres => 5432,
            Database::Mongo => 27017,
        }
    }
}

/// How `init` writes the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The local storage's folder.
    pub storage_path: String,
    /// When it is written (the header says), as text.
    pub written_at: String,
}

/// The generated file and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The `drkit.toml` text.
    pub text: String,
    /// The variables the file needs (set them in the environment or an `--env-file`).
    pub variables: Vec<(String, String)>,
    /// Lines for stderr: orphans, services whose address is not stable, what was skipped.
    pub notes: Vec<String>,
    /// The jobs written.
    pub jobs: Vec<String>,
}

/// A job or variable name part: lowercase letters, digits and `-` (a config name).
fn name_part(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

/// An environment variable name part: uppercase letters, digits and `_`.
fn var_part(s: &str) -> String {
    name_part(s).replace('-', "_").to_ascii_uppercase()
}

/// A TOML basic string of `s`.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A comment line's text: one line, no control characters (names come from the engine).
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The schedule, retention and freshness every generated job starts with.
const KEEP: &str = "keep = { last = 3, daily = 7, weekly = 4, monthly = 6 }";

/// The `drkit.toml` for `inv`.
pub fn render(inv: &Inventory, opts: &Options) -> Generated {
    let mut body = String::new();
    let mut variables: Vec<(String, String)> = Vec::new();
    let mut notes = Vec::new();
    let mut jobs = Vec::new();
    let mut used_names = BTreeSet::new();
    let mut unique = |base: String| {
        let mut name = base.clone();
        let mut n = 2;
        while !used_names.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        name
    };

    for p in &inv.projects {
        let _ = writeln!(body, "\n# ---- compose project {} ----", comment(&p.name));
        let mut covered: BTreeSet<&str> = BTreeSet::new();
        for s in &p.services {
            let Some(db) = Database::of_image(&s.image) else {
                continue;
            };
            let job = unique(format!("{}-{}", name_part(&p.name), name_part(&s.name)));
            let data: Vec<&Mount> = s
                .mounts
                .iter()
                .filter(|m| db.holds_data(&m.destination))
                .collect();
            covered.extend(data.iter().map(|m| m.volume.as_str()));
            let prefix = format!("{}_{}", var_part(&p.name), var_part(&s.name));
            let (host, port) = match &s.address {
                Some(a) => {
                    if !a.published {
                        notes.push(format!(
                            "job {job}: service {} publishes no port; the file uses its container address {} (it changes when the container is created again: publish the port, or run drkit on the project's network and use the service name)",
                            s.name, a.host
                        ));
                    }
                    (a.host.clone(), a.port)
                }
                None => {
                    notes.push(format!(
                        "job {job}: service {} has no address this host can reach; set the host in its url",
                        s.name
                    ));
                    (format!("{}-host", name_part(&s.name)), db.port())
                }
            };
            let _ = writeln!(
                body,
                "\n# Service {} (image {}, container {}): a logical dump, consistent while the server runs.",
                comment(&s.name),
                comment(&s.image),
                comment(&s.container)
            );
            let source = match db {
                Database::Postgres => {
                    let user = format!("{prefix}_USER");
                    let pass = format!("{prefix}_PASSWORD");
                    let seen = |n: &str| s.env_names.iter().any(|e| e == n);
                    variables.push((
                        user.clone(),
                        format!(
                            "the PostgreSQL user drkit dumps {} as{}",
                            s.name,
                            if seen("POSTGRES_USER") {
                                " (the container sets POSTGRES_USER)"
                            } else {
                                " (the image's default is postgres)"
                            }
                        ),
                    ));
                    variables.push((
                        pass.clone(),
                        format!(
                            "its password{}",
                            if seen("POSTGRES_PASSWORD") {
                                " (the container sets POSTGRES_PASSWORD)"
                            } else {
                                ""
                            }
                        ),
                    ));
                    let _ = writeln!(
                        body,
                        "# pg_dump runs inside the container (its own version); drkit reads the catalog at {host}:{port}."
                    );
                    format!(
                        "source = {{ type = \"postgres\", url = {}, databases = \"all\", globals = true, exec = {{ docker = {}, host = \"127.0.0.1\", port = {} }} }}",
                        quoted(&format!("postgres://${{{user}}}:${{{pass}}}@{host}:{port}/postgres")),
                        quoted(&s.container),
                        db.port()
                    )
                }
                Database::Mongo => {
                    let auth = s
                        .env_names
                        .iter()
                        .any(|e| e == "MONGO_INITDB_ROOT_USERNAME");
                    let url = if auth {
                        let user = format!("{prefix}_USER");
                        let pass = format!("{prefix}_PASSWORD");
                        variables.push((user.clone(), format!("the MongoDB user drkit dumps {} as (the container sets MONGO_INITDB_ROOT_USERNAME)", s.name)));
                        variables.push((
                            pass.clone(),
                            "its password (the container sets MONGO_INITDB_ROOT_PASSWORD)"
                                .to_string(),
                        ));
                        format!("mongodb://${{{user}}}:${{{pass}}}@{host}:{port}/?authSource=admin&directConnection=true")
                    } else {
                        format!("mongodb://{host}:{port}/?directConnection=true")
                    };
                    format!("source = {{ type = \"mongodb\", url = {} }}", quoted(&url))
                }
            };
            let _ = writeln!(body, "[job.{job}]\n{source}\nstorage = [\"local\"]");
            let _ = writeln!(body, "schedule = \"0 2 * * *\"\n{KEEP}\nmax_age = \"26h\"");
            if !data.is_empty() {
                let names: Vec<String> = data.iter().map(|m| quoted(&m.volume)).collect();
                let _ = writeln!(
                    body,
                    "# Its data volume: the guard accepts a fresh, verified dump of this job as its backup.\ncovers = [{}]",
                    names.join(", ")
                );
            }
            let _ = writeln!(
                body,
                "# A weekly restore drill into a throwaway container of the same image (docs/drills.md).\ndrill = {{ schedule = \"0 4 * * 0\", image = {} }}",
                quoted(&s.image)
            );
            jobs.push(job);
        }
        for v in &p.volumes {
            if covered.contains(v.name.as_str()) {
                let _ = writeln!(
                    body,
                    "\n# Volume {} ({}) holds a database server's files: covered by its dump above, not copied.",
                    comment(&v.key),
                    comment(&v.name)
                );
                continue;
            }
            let writers: Vec<&Service> = p
                .services
                .iter()
                .filter(|s| s.running && s.mounts.iter().any(|m| m.volume == v.name && m.rw))
                .collect();
            let job = unique(format!("{}-{}", name_part(&p.name), name_part(&v.key)));
            let size = v
                .size
                .map(crate::units::human_bytes)
                .unwrap_or_else(|| "size unknown".into());
            let _ = writeln!(
                body,
                "\n# Volume {} ({}, {size}).",
                comment(&v.key),
                comment(&v.name)
            );
            let stop = if writers.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = writers.iter().map(|s| s.container.as_str()).collect();
                let _ = writeln!(
                    body,
                    "# Written by {} (running): stopped for the copy and started again.",
                    comment(&names.join(", "))
                );
                ", stop_containers = true".to_string()
            };
            let _ = writeln!(
                body,
                "[job.{job}]\nsource = {{ type = \"docker-volume\", project = {}, volume = {}{stop} }}\nstorage = [\"local\"]\nschedule = \"30 2 * * *\"\n{KEEP}\nmax_age = \"26h\"",
                quoted(&p.name),
                quoted(&v.key)
            );
            jobs.push(job);
        }
    }
    if !inv.orphans.is_empty() {
        body.push_str("\n# ---- volumes that may hold data of an earlier project name ----\n");
        for o in &inv.orphans {
            let _ = writeln!(body, "# {}", comment(o));
            notes.push(o.clone());
        }
    }

    let mut text = String::new();
    let _ = writeln!(
        text,
        "# drkit.toml written by `drkit init` at {} from the Docker engine at {}.",
        comment(&opts.written_at),
        comment(&inv.engine)
    );
    text.push_str("# Review it, set the variables below, then: drkit doctor && drkit backup\n");
    text.push_str(
        "# Schedules run with `drkit daemon` (docs/deploy.md for cron, systemd, Kubernetes).\n",
    );
    if !variables.is_empty() {
        text.push_str("#\n# Variables to set (environment or --env-file; credentials are never written here):\n");
        for (name, what) in &variables {
            let _ = writeln!(text, "#   {name:<28} {}", comment(what));
        }
    }
    let _ = writeln!(
        text,
        "\n[storage.local]\ntype = \"local\"\npath = {}\n",
        quoted(&opts.storage_path)
    );
    text.push_str(
        "# An off-site copy (docs/s3.md): uncomment, and add \"offsite\" to each job's storage.\n\
         # [storage.offsite]\n\
         # type = \"s3\"\n\
         # bucket = \"backups\"\n\
         # endpoint = \"https://s3.example.com\"\n\
         # access_key_id = \"${S3_ACCESS_KEY}\"\n\
         # secret_access_key = \"${S3_SECRET_KEY}\"\n",
    );
    if inv.projects.is_empty() {
        text.push_str(
            "\n# No compose project was found on this engine: add jobs by hand (docs/config.md).\n",
        );
        notes.push("no compose project was found on the engine".to_string());
    }
    text.push_str(&body);
    Generated {
        text,
        variables,
        notes,
        jobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(volume: &str, destination: &str) -> Mount {
        Mount {
            volume: volume.into(),
            destination: destination.into(),
            rw: true,
        }
    }

    fn shop() -> Inventory {
        Inventory {
            engine: "unix:///var/run/docker.sock".into(),
            projects: vec![Project {
                name: "shop".into(),
                services: vec![
                    Service {
                        name: "db".into(),
                        container: "shop_db_1".into(),
                        image: "postgres:15".into(),
                        running: true,
                        mounts: vec![mount("shop_pgdata", "/var/lib/postgresql/data")],
                        env_names: vec!["POSTGRES_PASSWORD".into(), "PATH".into()],
                        address: Some(Address {
                            host: "127.0.0.1".into(),
                            port: 15432,
                            published: true,
                        }),
                    },
                    Service {
                        name: "app".into(),
                        container: "shop_app_1".into(),
                        image: "registry.example.com/shop/app:1.2".into(),
                        running: true,
                        mounts: vec![mount("shop_uploads", "/srv/uploads")],
                        ..Service::default()
                    },
                    Service {
                        name: "events".into(),
                        container: "shop_events_1".into(),
                        image: "mongo:7".into(),
                        running: true,
                        mounts: vec![mount("shop_mongo", "/data/db")],
                        env_names: vec!["MONGO_INITDB_ROOT_USERNAME".into()],
                        address: Some(Address {
                            host: "172.18.0.4".into(),
                            port: 27017,
                            published: false,
                        }),
                    },
                ],
                volumes: vec![
                    Volume {
                        name: "shop_cache".into(),
                        key: "cache".into(),
                        size: Some(0),
                    },
                    Volume {
                        name: "shop_mongo".into(),
                        key: "mongo".into(),
                        size: Some(1 << 20),
                    },
                    Volume {
                        name: "shop_pgdata".into(),
                        key: "pgdata".into(),
                        size: Some(50 << 20),
                    },
                    Volume {
                        name: "shop_uploads".into(),
                        key: "uploads".into(),
                        size: Some(4096),
                    },
                ],
            }],
            orphans: vec!["volume shop_uploads has a lookalike: oldshop_uploads".into()],
        }
    }

    fn opts() -> Options {
        Options {
            storage_path: "/var/backups/drkit".into(),
            written_at: "2026-12-04 20:00 UTC".into(),
        }
    }

    #[test]
    fn images_and_data_paths() {
        let cases = [
            ("postgres:15", Some(Database::Postgres)),
            (
                "docker.io/library/postgres:16-alpine",
                Some(Database::Postgres),
            ),
            ("postgis/postgis:16-3.4", Some(Database::Postgres)),
            (
                "timescale/timescaledb:latest-pg16",
                Some(Database::Postgres),
            ),
            ("drkit-test-postgres:15", None),
            ("localhost:5000/mongo:7", Some(Database::Mongo)),
            ("mongo@sha256:abcd", Some(Database::Mongo)),
            ("redis:7", None),
            ("registry.example.com/shop/app:1.2", None),
        ];
        for (image, want) in cases {
            assert_eq!(Database::of_image(image), want, "{image}");
        }
        assert!(Database::Postgres.holds_data("/var/lib/postgresql/data"));
        assert!(Database::Postgres.holds_data("/var/lib/postgresql/"));
        assert!(!Database::Postgres.holds_data("/var/lib/postgresql-backups"));
        assert!(Database::Mongo.holds_data("/data/db/"));
        assert!(!Database::Mongo.holds_data("/data/dbx"));
    }

    #[test]
    fn a_deployment_becomes_a_valid_config() {
        let g = render(&shop(), &opts());
        assert_eq!(
            g.jobs,
            ["shop-db", "shop-events", "shop-cache", "shop-uploads"]
        );
        // The file is a valid config once its variables are set.
        let c = crate::Config::parse(&g.text, "drkit.toml", &|_| Some("x".into())).unwrap();
        let db = c.job("shop-db").unwrap();
        assert_eq!(db.source.kind, "postgres");
        assert_eq!(db.covers, ["shop_pgdata"]);
        assert_eq!(
            db.source.settings["exec"]["docker"].as_str(),
            Some("shop_db_1")
        );
        assert_eq!(c.job("shop-events").unwrap().covers, ["shop_mongo"]);
        let up = c.job("shop-uploads").unwrap();
        assert_eq!(up.source.kind, "docker-volume");
        assert_eq!(up.source.settings["stop_containers"].as_bool(), Some(true));
        assert_eq!(up.source.settings["volume"].as_str(), Some("uploads"));
        assert_eq!(up.source.settings["project"].as_str(), Some("shop"));
        // No container writes the cache: nothing to stop.
        assert!(c
            .job("shop-cache")
            .unwrap()
            .source
            .settings
            .get("stop_containers")
            .is_none());
        assert!(!c.job.contains_key("shop-pgdata") && !c.job.contains_key("shop-mongo"));
        assert!(
            c.job("shop-db")
                .unwrap()
                .drill
                .as_ref()
                .unwrap()
                .image
                .as_deref()
                == Some("postgres:15")
        );
        // Credentials are placeholders; their names are listed.
        let names: Vec<&str> = g.variables.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "SHOP_DB_USER",
                "SHOP_DB_PASSWORD",
                "SHOP_EVENTS_USER",
                "SHOP_EVENTS_PASSWORD"
            ]
        );
        assert!(
            g.text.contains("${SHOP_DB_PASSWORD}@127.0.0.1:15432"),
            "{}",
            g.text
        );
        // An unpublished service's address is said to be unstable; orphans are told.
        assert!(g
            .notes
            .iter()
            .any(|n| n.contains("shop-events") && n.contains("172.18.0.4")));
        assert!(g.notes.iter().any(|n| n.contains("oldshop_uploads")));
        assert!(g.text.contains("# volume shop_uploads has a lookalike"));
        // Without its variables the file does not load: nothing is silently empty.
        let e = crate::Config::parse(&g.text, "drkit.toml", &|_| None).unwrap_err();
        assert!(e.to_string().contains("SHOP_DB_USER"), "{e}");
    }

    #[test]
    fn hostile_names_stay_names() {
        let mut inv = shop();
        inv.projects[0].name = "evil\"]\n[storage.x]".into();
        inv.projects[0].services[1].container = "a\nb".into();
        inv.projects[0].volumes[3].key = "up\"loads\n#".into();
        let g = render(&inv, &opts());
        let c = crate::Config::parse(&g.text, "drkit.toml", &|_| Some("x".into())).unwrap();
        assert!(!c.storage.contains_key("x"), "{}", g.text);
        assert!(
            c.job.keys().all(|k| crate::config::valid_name(k)),
            "{:?}",
            c.job.keys()
        );
        let up = c.job.values().find(|j| {
            j.source.settings.get("volume").and_then(|v| v.as_str()) == Some("up\"loads\n#")
        });
        assert!(up.is_some(), "{}", g.text);
    }

    #[test]
    fn an_engine_without_projects_still_gives_a_loadable_file() {
        let inv = Inventory {
            engine: "unix:///var/run/docker.sock".into(),
            ..Inventory::default()
        };
        let g = render(&inv, &opts());
        assert!(g.jobs.is_empty());
        crate::Config::parse(&g.text, "drkit.toml", &|_| None).unwrap();
        assert!(g.notes[0].contains("no compose project"));
    }
}
