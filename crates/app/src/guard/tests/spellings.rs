//! The spellings table, in a file of its own: one row per command line decided.

use super::{words, Want, World};
use crate::guard::Doomed;

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
                e.kind() == drkit_core::ErrorKind::Refused && e.to_string().contains(part)
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
