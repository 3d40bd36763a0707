#!/usr/bin/env bash
# scripts/servers.sh — start the servers the drkit test suite needs, on loopback, and stop them.
#
# Usage (sourced; this is what scripts/test.sh does):
#     source scripts/servers.sh
#     start_all        # install what is missing, start every server in a fresh temp dir on
#                      # 127.0.0.1 with free ports, wait until each answers, export DRKIT_TEST_*.
#                      # Returns non-zero (after one line naming the server and its log tail)
#                      # when a required server cannot be started. Installs an EXIT/INT/TERM
#                      # trap that calls stop_all.
#     ...              # run tests
#     stop_all         # stop everything start_all started and remove its temp dir (idempotent)
# Call start_all in the shell itself (not in $(...) or a pipeline): it records child PIDs.
# Works with or without `set -euo pipefail` in the calling script.
#
# Or executed:
#     bash scripts/servers.sh run CMD [ARGS...]   start all, run CMD with DRKIT_TEST_* set, stop all
#     bash scripts/servers.sh check               start all, print DRKIT_TEST_*, stop all
#     bash scripts/servers.sh install             only install what is missing (servers, and the
#                                                 tools the tests run: busybox, prometheus, age)
#
# Exported for the tests (the contract):
#     DRKIT_TEST_PG_URL          postgres://drkit:drkit-test-pw@127.0.0.1:PORT/postgres
#     DRKIT_TEST_PG_BINDIR       /usr/lib/postgresql/15/bin
#     DRKIT_TEST_MONGO_URL       mongodb://127.0.0.1:PORT
#     DRKIT_TEST_MOTO_ENDPOINT   http://127.0.0.1:PORT   (+ _ACCESS_KEY, _SECRET_KEY)
#     DRKIT_TEST_S3S_ENDPOINT    http://127.0.0.1:PORT   (+ _ACCESS_KEY, _SECRET_KEY)
#     DRKIT_TEST_DOCKER=1        when the Docker engine answers
#     DRKIT_TEST_PG_IMAGE        drkit-test-postgres:15, a local image of Debian's PostgreSQL 15 with
#                                the official postgres image's interface (built once, when Docker answers)
#     DRKIT_TEST_BASE_IMAGE      drkit-test-debian:bookworm, Debian bookworm minbase: the deployment
#                                image test's stand-in for debian:bookworm-slim (built once, when Docker answers)
#     DRKIT_TEST_SERVERS=1       the harness ran
#     DRKIT_PROMETHEUS           /usr/bin/prometheus  (Debian's prometheus package; kept when already set)
#     DRKIT_PROMTOOL             /usr/bin/promtool    (same package: the monitoring examples' checks)
# Extras (informational): DRKIT_TEST_SERVERS_DIR (temp dir with every server's log),
#     DRKIT_TEST_COMPOSE ("docker-compose" or "docker compose", when one is there).
#
# Knobs:
#     DRKIT_TEST_EXTERNAL=1         start nothing; check the DRKIT_TEST_* already in the
#                                   environment (e.g. docker-compose.test.yml) answer. A group
#                                   that is unset is reported and left unset.
#     DRKIT_TEST_REQUIRE_DOCKER=0   do not fail when the Docker engine does not answer
#                                   (default 1: the engine is a required server).
#     DRKIT_TEST_SERVER_TIMEOUT     seconds to wait for each server (default 60).
#     DRKIT_PYTHON                  python interpreter for moto / secantusdb (default python3).
#
# Notes found while building this (versions: postgresql-15 15.x from Debian bookworm,
# secantusdb 0.7.0b3, moto 5.2.1, s3s-fs 0.14.1):
# - PostgreSQL refuses to run as root, so as root initdb/pg_ctl run as the `postgres` system
#   user (created by the Debian package) in a temp dir that user owns. Both TCP and the unix
#   socket use scram-sha-256; the bootstrap superuser is `drkit`. pgcrypto and pgbench ship in
#   the postgresql-15 package itself (pg_dump/pg_restore/psql/pg_isready in postgresql-client-15).
# - secantusd-py: --host/--port/--storage-path; --config FILE stops it from auto-discovering
#   ./secantusd.toml or ~/.secantus/secantusd.toml. By default it advertises itself as the
#   primary of a one-node replica set "secantus" whose host list is exactly HOST:PORT, so a
#   driver discovering the topology from mongodb://127.0.0.1:PORT lands on the same address.
#   No auth (no --auth).
# - moto: with INITIAL_NO_AUTH_ACTION_COUNT=0 every S3/IAM action is authenticated: the access
#   key must belong to an IAM user of moto's own IAM (there are no built-in keys), the SigV4
#   signature is recomputed with that user's secret, and the user's policies must allow the
#   action. So after start we POST /moto-api/reset-auth "inf" (auth off), create IAM user
#   drkit-test with an inline Allow */* policy and an access key through the IAM API, then POST
#   /moto-api/reset-auth "0" (auth on again, counter reset). The keys are random per run
#   (AKIA...). Quirks: a request with no Authorization header is refused, but on some routes
#   (e.g. PUT /bucket, GET /) with HTTP 500 (a KeyError inside moto) rather than 403, and for
#   the same reason SigV4 presigned (query-string) URLs get HTTP 500; the body is not checked
#   against x-amz-content-sha256 (a body other than the signed one is stored, 200); bucket
#   names must be valid S3 names (3+ chars); /moto-api/reset-auth is itself unauthenticated,
#   so tests must not call it.
# - s3s-fs: --access-key/--secret-key turn on SigV4 checking (unsigned -> 403 "Signature is
#   required", wrong secret -> SignatureDoesNotMatch, unknown key -> NotSignedUp). SigV4
#   presigned URLs work (SigV2 ones -> 400); a body other than the signed one is refused
#   (500 InternalError); UNSIGNED-PAYLOAD is accepted by both servers. Path-style addressing
#   (no --domain given).
# - Docker: the engine has no images and no registry can be reached: tests must build their
#   images from local files. Compose is v1 (`docker-compose`) on this machine kind.

# ---------------------------------------------------------------------------------------------

DRKIT_PG_VERSION=15
DRKIT_PG_BINDIR=/usr/lib/postgresql/${DRKIT_PG_VERSION}/bin
DRKIT_PG_USER=drkit
DRKIT_PG_PASSWORD=drkit-test-pw
DRKIT_SECANTUS_SPEC='secantusdb==0.7.0b3'
DRKIT_MOTO_SPEC='moto[server]==5.2.1'
DRKIT_S3S_SPEC='s3s-fs@0.14.1'

_DRKIT_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_DRKIT_DIR=""          # temp dir of this run
_DRKIT_PROCS=()        # "name pid" of background servers started by this shell
_DRKIT_PG_STARTED=0
_DRKIT_APT_UPDATED=0
_DRKIT_PY=""

_drkit_say() { printf 'drkit-servers: %s\n' "$*" >&2; }

# One clear line naming the server, then its log tail.
_drkit_fail() { # name logfile message
    local name=$1 log=$2 msg=$3
    printf 'drkit-servers: FAILED: %s: %s (log: %s)\n' "$name" "$msg" "${log:-none}" >&2
    if [[ -n $log && -s $log ]]; then
        tail -n 25 "$log" | sed "s/^/    [$name] /" >&2
    fi
    return 1
}

_drkit_now() { date +%s.%N; }
_drkit_elapsed() { awk -v a="$1" -v b="$(_drkit_now)" 'BEGIN { printf "%.1fs", b - a }'; }

# Sets _DRKIT_PY once, in the calling shell (not in a $(...) subshell, so the result is kept).
_drkit_resolve_python() {
    [[ -n $_DRKIT_PY ]] && return 0
    # The real interpreter (not a pyenv shim): faster, and the PIDs we record are the servers'.
    _DRKIT_PY=$("${DRKIT_PYTHON:-python3}" -c 'import sys; print(sys.executable)' 2>/dev/null) || {
        _DRKIT_PY=""
        _drkit_say "FAILED: no ${DRKIT_PYTHON:-python3} found (needed for moto, secantusdb and the checks)"
        return 1
    }
}
_drkit_python() {
    [[ -n $_DRKIT_PY ]] || _drkit_resolve_python || return 1
    printf '%s\n' "$_DRKIT_PY"
}

# Runs a command as root: directly, or through sudo when we are not root.
_drkit_as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# Runs a command as the PostgreSQL owner: `postgres` when we are root, ourselves otherwise.
_drkit_as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_drkit_free_ports() { # count -> that many distinct free TCP ports on 127.0.0.1, on one line
    "$(_drkit_python)" - "$1" <<'EOF'
import random, socket, sys
n, got = int(sys.argv[1]), []
while len(got) < n:
    p = random.randint(20000, 32000)   # below Linux's ephemeral range, so no client port takes it
    if p in got:
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
        got.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, got)))
EOF
}

# ------------------------------------------------------------------------------- install ----

_drkit_apt_install() { # packages...
    if [[ $_DRKIT_APT_UPDATED -eq 0 ]]; then
        _drkit_as_root apt-get update -qq >/dev/null || return 1
        _DRKIT_APT_UPDATED=1
    fi
    _drkit_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

_drkit_install_postgres() {
    [[ -x $DRKIT_PG_BINDIR/postgres && -x $DRKIT_PG_BINDIR/initdb && -x $DRKIT_PG_BINDIR/psql \
        && -x $DRKIT_PG_BINDIR/pg_dump && -x $DRKIT_PG_BINDIR/pgbench ]] && return 0
    _drkit_say "installing postgresql-${DRKIT_PG_VERSION} (apt)"
    # Keep the package from creating and starting a system cluster: we run our own.
    _drkit_as_root mkdir -p /etc/postgresql-common/createcluster.d &&
        printf 'create_main_cluster = false\n' |
        _drkit_as_root tee /etc/postgresql-common/createcluster.d/drkit-no-main-cluster.conf >/dev/null
    _drkit_apt_install "postgresql-${DRKIT_PG_VERSION}" "postgresql-client-${DRKIT_PG_VERSION}" || {
        _drkit_say "FAILED: apt-get install postgresql-${DRKIT_PG_VERSION}"
        return 1
    }
}

_drkit_pip_install() { # specs...
    local py
    py=$(_drkit_python) || return 1
    # PIP_BREAK_SYSTEM_PACKAGES: allow installing into a Debian-managed python as well.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
        "$py" -m pip install -q --disable-pip-version-check "$@"
}

_drkit_install_python_servers() {
    local py
    py=$(_drkit_python) || return 1
    if ! "$py" -c 'import secantus.cli' 2>/dev/null; then
        _drkit_say "installing $DRKIT_SECANTUS_SPEC (pip)"
        _drkit_pip_install "$DRKIT_SECANTUS_SPEC" || { _drkit_say "FAILED: pip install $DRKIT_SECANTUS_SPEC"; return 1; }
    fi
    if ! "$py" -c 'import moto.server, flask, flask_cors, boto3' 2>/dev/null; then
        _drkit_say "installing $DRKIT_MOTO_SPEC (pip)"
        _drkit_pip_install "$DRKIT_MOTO_SPEC" || { _drkit_say "FAILED: pip install $DRKIT_MOTO_SPEC"; return 1; }
    fi
}

_drkit_install_s3s() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    case ":$PATH:" in *":$cargo_bin:"*) ;; *) export PATH="$cargo_bin:$PATH" ;; esac
    command -v s3s-fs >/dev/null 2>&1 && return 0
    _drkit_say "installing $DRKIT_S3S_SPEC (cargo install: a few minutes, once; cached in $cargo_bin)"
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/drkit-s3s-install.XXXXXX.log")
    # From / so that the project's .cargo/config.toml does not apply to this build.
    if ! (cd / && cargo install "$DRKIT_S3S_SPEC" --features binary) >"$log" 2>&1; then
        _drkit_fail s3s-fs "$log" "cargo install $DRKIT_S3S_SPEC --features binary failed"
        return 1
    fi
    rm -f "$log"
}

# Debian's busybox-static: the Docker tests import it as their tiny image (no registry here).
_drkit_install_busybox() {
    [[ -x /bin/busybox ]] && return 0
    _drkit_say "installing busybox-static (apt; the Docker tests' image)"
    _drkit_apt_install busybox-static || { _drkit_say "FAILED: apt-get install busybox-static"; return 1; }
}

# Debian's prometheus: /usr/bin/prometheus (the metrics tests scrape drkit with it) and
# /usr/bin/promtool (checks of examples/prometheus/). The package's postinst would start a
# system Prometheus on :9090: a policy-rc.d that refuses keeps it from starting, unless the
# machine already has its own policy-rc.d.
_drkit_install_prometheus() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && return 0
    _drkit_say "installing prometheus (apt; prometheus and promtool for the monitoring tests)"
    local policy=/usr/sbin/policy-rc.d ours=0 rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | _drkit_as_root tee "$policy" >/dev/null &&
            _drkit_as_root chmod 755 "$policy" && ours=1
    fi
    _drkit_apt_install prometheus || rc=1
    [[ $ours -eq 1 ]] && _drkit_as_root rm -f "$policy"
    [[ $rc -eq 0 ]] || { _drkit_say "FAILED: apt-get install prometheus"; return 1; }
}

# Debian's age (the `age` encryption tool), for the tests that run it.
# The deployment examples' checkers: systemd-analyze (Debian's systemd) for the units,
# kubernetes-validate (PyPI, schemas bundled, offline) for the CronJobs.
_drkit_install_deploy_checkers() {
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        _drkit_say "installing systemd (apt; systemd-analyze verify for examples/deploy)"
        _drkit_apt_install systemd || { _drkit_say "FAILED: apt-get install systemd"; return 1; }
    fi
    local py
    py=$(_drkit_python) || return 1
    if ! "$py" -c 'import kubernetes_validate' 2>/dev/null; then
        _drkit_say "installing kubernetes-validate (pip; the Kubernetes schemas for examples/deploy)"
        _drkit_pip_install 'kubernetes-validate==1.37.0' || { _drkit_say "FAILED: pip install kubernetes-validate"; return 1; }
    fi
}

_drkit_install_age() {
    command -v age >/dev/null 2>&1 && return 0
    _drkit_say "installing age (apt)"
    _drkit_apt_install age || { _drkit_say "FAILED: apt-get install age"; return 1; }
}

# The tools' paths for the tests (not servers: the same in every mode).
_drkit_export_tools() {
    export DRKIT_PROMETHEUS=${DRKIT_PROMETHEUS:-/usr/bin/prometheus}
    export DRKIT_PROMTOOL=${DRKIT_PROMTOOL:-/usr/bin/promtool}
}

# The drill tests' throwaway PostgreSQL image, `drkit-test-postgres:15` (no registry here):
# Debian bookworm's postgresql-15 by debootstrap, imported with an entrypoint that honours the
# official postgres image's interface (POSTGRES_PASSWORD, POSTGRES_USER, PGDATA, initdb into
# /var/lib/postgresql/data when empty, listen on 0.0.0.0:5432, scram-sha-256 for remote
# connections). Built once (skipped when the engine has it); a failed build fails the run.
# Exported to the tests as DRKIT_TEST_PG_IMAGE.
DRKIT_DRILL_PG_IMAGE=drkit-test-postgres:15
_drkit_pg_entrypoint() {
    cat <<'SCRIPT'
#!/bin/sh
# drkit's test image: the official postgres image's interface, for PostgreSQL 15 of Debian.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
POSTGRES_USER=${POSTGRES_USER:-postgres}
export PGDATA POSTGRES_USER
bin=/usr/lib/postgresql/15/bin
if [ "${1:-postgres}" = postgres ]; then
    [ $# -gt 0 ] && shift
    if [ "$(id -u)" = 0 ]; then
        mkdir -p "$PGDATA" /run/postgresql
        chown -R postgres:postgres "$PGDATA" /run/postgresql
        chmod 700 "$PGDATA"
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "Error: Database is uninitialized and superuser password is not specified." >&2
            echo "       Set POSTGRES_PASSWORD to a non-empty value for the superuser." >&2
            exit 1
        fi
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 \
            --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
        echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
        printf "listen_addresses = '*'\nport = 5432\n" >>"$PGDATA/postgresql.conf"
        echo "PostgreSQL init process complete; ready for start up."
    fi
    exec "$bin/postgres" -D "$PGDATA" "$@"
fi
exec "$@"
SCRIPT
}

_drkit_build_pg_image() {
    if ! timeout 20 docker info >/dev/null 2>&1; then
        [[ ${DRKIT_TEST_REQUIRE_DOCKER:-1} == 1 ]] || return 0 # reported by _drkit_check_docker
        _drkit_fail "$DRKIT_DRILL_PG_IMAGE" "" "the Docker engine does not answer: cannot build the image"
        return 1
    fi
    if docker image inspect "$DRKIT_DRILL_PG_IMAGE" >/dev/null 2>&1; then
        export DRKIT_TEST_PG_IMAGE=$DRKIT_DRILL_PG_IMAGE
        return 0
    fi
    local mirror t0 dir log pid
    t0=$(_drkit_now)
    mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v -- '-security' |
        grep -oE 'https?://[^ ]+' | head -n 1)
    [[ -n $mirror ]] || { _drkit_fail "$DRKIT_DRILL_PG_IMAGE" "" "no Debian mirror in /etc/apt/sources.list{,.d}"; return 1; }
    if ! command -v debootstrap >/dev/null 2>&1; then
        _drkit_say "installing debootstrap (apt; for the drill tests' PostgreSQL image)"
        _drkit_apt_install debootstrap || { _drkit_say "FAILED: apt-get install debootstrap"; return 1; }
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/drkit-pg-image.XXXXXX") || return 1
    log="$dir.log"
    _drkit_say "building $DRKIT_DRILL_PG_IMAGE: debootstrap bookworm + postgresql-15 from $mirror (once, a few minutes)"
    if ! _drkit_as_root debootstrap --variant=minbase --include=postgresql-15 bookworm "$dir/root" "$mirror" >"$log" 2>&1; then
        _drkit_fail "$DRKIT_DRILL_PG_IMAGE" "$log" "debootstrap failed"
        _drkit_as_root rm -rf "$dir"
        return 1
    fi
    # Nothing the packages' scripts started in the chroot keeps running.
    for pid in /proc/[0-9]*; do
        [[ $(readlink "$pid/root" 2>/dev/null) == "$dir/root" ]] && _drkit_as_root kill -KILL "${pid#/proc/}" 2>/dev/null
    done
    # The package's own cluster is not used: the entrypoint makes one in PGDATA.
    _drkit_as_root rm -rf "$dir/root/var/cache/apt/archives/"*.deb "$dir/root/var/lib/apt/lists/"* \
        "$dir/root/var/lib/postgresql/15" "$dir/root/etc/postgresql/15"
    _drkit_pg_entrypoint | _drkit_as_root tee "$dir/root/usr/local/bin/docker-entrypoint.sh" >/dev/null
    _drkit_as_root chmod 755 "$dir/root/usr/local/bin/docker-entrypoint.sh"
    if ! _drkit_as_root tar -C "$dir/root" -c . 2>>"$log" | docker import \
        --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]' \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'VOLUME /var/lib/postgresql/data' \
        --change 'EXPOSE 5432' \
        - "$DRKIT_DRILL_PG_IMAGE" >>"$log" 2>&1; then
        _drkit_fail "$DRKIT_DRILL_PG_IMAGE" "$log" "docker import failed"
        _drkit_as_root rm -rf "$dir"
        return 1
    fi
    _drkit_as_root rm -rf "$dir" "$log"
    export DRKIT_TEST_PG_IMAGE=$DRKIT_DRILL_PG_IMAGE
    _drkit_say "built $DRKIT_DRILL_PG_IMAGE ($(_drkit_elapsed "$t0"))"
}

# The deployment image test's base, `drkit-test-debian:bookworm` (no registry here): Debian
# bookworm minbase by debootstrap, imported as a stand-in for `debian:bookworm-slim` (the FROM
# of examples/deploy/Dockerfile, which the test builds with --build-arg BASE_IMAGE=this). Its
# apt sources are the mirror's, so the Dockerfile's `apt-get install` works as on a real slim
# image. Built once (a minute or two; skipped when the engine has it); a failed build fails the run.
# Exported to the tests as DRKIT_TEST_BASE_IMAGE.
DRKIT_BASE_IMAGE=drkit-test-debian:bookworm
_drkit_build_base_image() {
    if ! timeout 20 docker info >/dev/null 2>&1; then
        [[ ${DRKIT_TEST_REQUIRE_DOCKER:-1} == 1 ]] || return 0 # reported by _drkit_check_docker
        _drkit_fail "$DRKIT_BASE_IMAGE" "" "the Docker engine does not answer: cannot build the image"
        return 1
    fi
    if docker image inspect "$DRKIT_BASE_IMAGE" >/dev/null 2>&1; then
        export DRKIT_TEST_BASE_IMAGE=$DRKIT_BASE_IMAGE
        return 0
    fi
    local mirror t0 dir log
    t0=$(_drkit_now)
    # The mirror as _drkit_build_pg_image finds it: apt's first non-security source.
    mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v -- '-security' |
        grep -oE 'https?://[^ ]+' | head -n 1)
    [[ -n $mirror ]] || { _drkit_fail "$DRKIT_BASE_IMAGE" "" "no Debian mirror in /etc/apt/sources.list{,.d}"; return 1; }
    if ! command -v debootstrap >/dev/null 2>&1; then
        _drkit_say "installing debootstrap (apt; for the deployment test's base image)"
        _drkit_apt_install debootstrap || { _drkit_say "FAILED: apt-get install debootstrap"; return 1; }
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/drkit-base-image.XXXXXX") || return 1
    log="$dir.log"
    _drkit_say "building $DRKIT_BASE_IMAGE: debootstrap --variant=minbase bookworm from $mirror (once, a minute or two)"
    if ! _drkit_as_root debootstrap --variant=minbase bookworm "$dir/root" "$mirror" >"$log" 2>&1; then
        _drkit_fail "$DRKIT_BASE_IMAGE" "$log" "debootstrap failed"
        _drkit_as_root rm -rf "$dir"
        return 1
    fi
    # As a slim image: no package cache, no package lists (a Dockerfile runs apt-get update).
    _drkit_as_root rm -rf "$dir/root/var/cache/apt/archives/"*.deb "$dir/root/var/lib/apt/lists/"*
    if ! _drkit_as_root tar -C "$dir/root" -c . 2>>"$log" | docker import \
        --change 'CMD ["bash"]' \
        - "$DRKIT_BASE_IMAGE" >>"$log" 2>&1; then
        _drkit_fail "$DRKIT_BASE_IMAGE" "$log" "docker import failed"
        _drkit_as_root rm -rf "$dir"
        return 1
    fi
    _drkit_as_root rm -rf "$dir" "$log"
    export DRKIT_TEST_BASE_IMAGE=$DRKIT_BASE_IMAGE
    _drkit_say "built $DRKIT_BASE_IMAGE ($(_drkit_elapsed "$t0"))"
}

# Installs whatever is missing. Safe to call repeatedly (checks are fast).
install_servers() {
    _drkit_resolve_python || return 1
    _drkit_install_postgres || return 1
    _drkit_install_python_servers || return 1
    _drkit_install_s3s || return 1
    _drkit_install_busybox || return 1
    _drkit_install_prometheus || return 1
    _drkit_install_age || return 1
    _drkit_install_deploy_checkers || return 1
}

# ------------------------------------------------------------------------------ checks -----

_drkit_wait() { # name logfile pid-or-empty check-command...
    local name=$1 log=$2 pid=$3
    shift 3
    local deadline=$((SECONDS + ${DRKIT_TEST_SERVER_TIMEOUT:-60}))
    while ((SECONDS < deadline)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            _drkit_fail "$name" "$log" "process exited before answering"
            return 1
        fi
        sleep 0.2
    done
    _drkit_fail "$name" "$log" "did not answer within ${DRKIT_TEST_SERVER_TIMEOUT:-60}s"
}

_drkit_psql() {
    if [[ -x $DRKIT_PG_BINDIR/psql ]]; then "$DRKIT_PG_BINDIR/psql" "$@"; else psql "$@"; fi
}

_drkit_check_pg() { # url -> a real query over TCP with the password
    PGCONNECT_TIMEOUT=3 _drkit_psql "$1" -XAtqc 'select 1' 2>/dev/null | grep -qx 1
}

# A wrong password must be refused (password auth really on).
_drkit_check_pg_auth() { # url
    local bad=${1/:drkit-test-pw@/:wrong-password@}
    [[ $bad != "$1" ]] || return 0 # external URL with another password: nothing to swap
    ! PGCONNECT_TIMEOUT=3 _drkit_psql "$bad" -XAtqc 'select 1' >/dev/null 2>&1
}

_drkit_check_mongo() { # mongodb://host:port[/...] -> OP_MSG {ping: 1} answers ok: 1
    "$(_drkit_python)" - "$1" <<'EOF'
import socket, struct, sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
host, port = u.hostname or "127.0.0.1", u.port or 27017
def bson(items):
    b = b""
    for k, v in items:
        if isinstance(v, int):
            b += b"\x10" + k.encode() + b"\x00" + struct.pack("<i", v)
        else:
            e = v.encode()
            b += b"\x02" + k.encode() + b"\x00" + struct.pack("<i", len(e) + 1) + e + b"\x00"
    return struct.pack("<i", len(b) + 5) + b + b"\x00"
body = struct.pack("<I", 0) + b"\x00" + bson([("ping", 1), ("$db", "admin")])
msg = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body
s = socket.create_connection((host, port), timeout=3)
s.settimeout(3)
s.sendall(msg)
def recv(n):
    out = b""
    while len(out) < n:
        c = s.recv(n - len(out))
        if not c:
            raise SystemExit("connection closed")
        out += c
    return out
length, _, _, op = struct.unpack("<iiii", recv(16))
reply = recv(length - 16)
ok = b"\x01ok\x00" + struct.pack("<d", 1.0)
sys.exit(0 if op == 2013 and ok in reply else 1)
EOF
}

_drkit_check_http() { # url -> any HTTP answer
    "$(_drkit_python)" - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=3)
except urllib.error.HTTPError:
    pass  # an HTTP error status is an answer
EOF
}

# SigV4 really checked: signed ListBuckets works; wrong secret, unknown key and unsigned are refused.
_drkit_check_s3_sigv4() { # name endpoint access secret logfile
    local out
    if ! out=$("$(_drkit_python)" - "$2" "$3" "$4" 2>&1 <<'EOF'
import sys, urllib.request, urllib.error
ep, ak, sk = sys.argv[1:4]
try:
    import boto3
    from botocore.config import Config
except ImportError:
    print("boto3 not installed: signature checks skipped")
    sys.exit(0)
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
             connect_timeout=5, read_timeout=15)
def client(a, s):
    return boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                        aws_access_key_id=a, aws_secret_access_key=s, config=cfg)
client(ak, sk).list_buckets()
for label, a, s in (("a wrong secret", ak, sk + "x"), ("an unknown key", "AKIADRKITNOSUCHKEY00", sk)):
    try:
        client(a, s).list_buckets()
    except Exception:
        continue
    sys.exit("request signed with %s was accepted: SigV4 not checked" % label)
try:
    urllib.request.urlopen(ep + "/", timeout=5)
    sys.exit("unsigned request was accepted: SigV4 not checked")
except urllib.error.HTTPError:
    pass
EOF
    ); then
        _drkit_fail "$1" "$5" "S3 check at $2 failed: $(printf '%s' "$out" | tail -n 1)"
        return 1
    fi
    [[ -z $out ]] || _drkit_say "$1: $out"
}

_drkit_check_docker() {
    local ver
    if ver=$(timeout 20 docker info --format '{{.ServerVersion}}' 2>/dev/null) && [[ -n $ver ]]; then
        export DRKIT_TEST_DOCKER=1
        if command -v docker-compose >/dev/null 2>&1; then
            export DRKIT_TEST_COMPOSE=docker-compose
        elif timeout 10 docker compose version >/dev/null 2>&1; then
            export DRKIT_TEST_COMPOSE="docker compose"
        else
            unset DRKIT_TEST_COMPOSE
        fi
        _drkit_say "docker engine $ver answers; compose: ${DRKIT_TEST_COMPOSE:-none}"
        return 0
    fi
    unset DRKIT_TEST_DOCKER DRKIT_TEST_COMPOSE
    if [[ ${DRKIT_TEST_REQUIRE_DOCKER:-1} == 1 ]]; then
        _drkit_fail docker "" "'docker info' does not answer (is the engine running? set DRKIT_TEST_REQUIRE_DOCKER=0 to run without it)"
        return 1
    fi
    _drkit_say "docker engine does not answer: DRKIT_TEST_DOCKER left unset (DRKIT_TEST_REQUIRE_DOCKER=0)"
}

# ----------------------------------------------------------------------------- servers -----

# Record a background server: "name pid starttime" in memory and in the run dir (for the
# clean-up of a run that was killed before its trap could run).
_drkit_record() { # name pid
    local st
    st=$(awk '{print $22}' "/proc/$2/stat" 2>/dev/null)
    _DRKIT_PROCS+=("$1 $2")
    printf '%s %s %s\n' "$1" "$2" "$st" >>"$_DRKIT_DIR/pids"
}

_drkit_start_postgres() { # port
    local port=$1 d="$_DRKIT_DIR/pg" t0
    t0=$(_drkit_now)
    mkdir -p "$d/sock"
    printf '%s\n' "$DRKIT_PG_PASSWORD" >"$d/pwfile"
    : >"$d/log"
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || { _drkit_fail postgres "" "no 'postgres' system user to run as"; return 1; }
        chown -R postgres: "$d"
    fi
    chmod 700 "$d"
    if ! _drkit_as_pg "$DRKIT_PG_BINDIR/initdb" -D "$d/data" -U "$DRKIT_PG_USER" --pwfile="$d/pwfile" \
        --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-sync >>"$d/log" 2>&1; then
        _drkit_fail postgres "$d/log" "initdb failed"
        return 1
    fi
    rm -f "$d/pwfile"
    cat >>"$d/data/postgresql.conf" <<EOF
# drkit test server
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$d/sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
EOF
    _DRKIT_PG_STARTED=1
    if ! _drkit_as_pg "$DRKIT_PG_BINDIR/pg_ctl" -D "$d/data" -l "$d/log" -w -t "${DRKIT_TEST_SERVER_TIMEOUT:-60}" -s start; then
        _drkit_fail postgres "$d/log" "pg_ctl start failed"
        return 1
    fi
    local url="postgres://$DRKIT_PG_USER:$DRKIT_PG_PASSWORD@127.0.0.1:$port/postgres"
    _drkit_wait postgres "$d/log" "" _drkit_check_pg "$url" || return 1
    _drkit_check_pg_auth "$url" || { _drkit_fail postgres "$d/log" "a wrong password was accepted"; return 1; }
    export DRKIT_TEST_PG_URL=$url DRKIT_TEST_PG_BINDIR=$DRKIT_PG_BINDIR
    _drkit_say "postgres $(_drkit_psql "$url" -XAtqc 'show server_version' 2>/dev/null) on 127.0.0.1:$port ready ($(_drkit_elapsed "$t0"))"
}

_drkit_launch_mongo() { # port
    local d="$_DRKIT_DIR/mongo" py bin
    mkdir -p "$d/data"
    : >"$d/secantusd.toml" # explicit empty config: no auto-discovery of a stray secantusd.toml
    py=$(_drkit_python) || return 1
    bin="$(dirname "$py")/secantusd-py"
    [[ -x $bin ]] || bin=$(command -v secantusd-py) || { _drkit_fail mongodb "" "secantusd-py not found"; return 1; }
    (cd "$d" && exec "$bin" --config "$d/secantusd.toml" --host 127.0.0.1 --port "$1" \
        --storage-path "$d/data" --cache-size 256M --log-level WARNING </dev/null >"$d/log" 2>&1) &
    _drkit_record mongodb $!
}

_drkit_launch_moto() { # port
    local d="$_DRKIT_DIR/moto" py
    mkdir -p "$d"
    py=$(_drkit_python) || return 1
    # moto_server_sigv4.py = moto.server with the raw request URI used for SigV4 checks (moto
    # otherwise rejects every query value holding '/' or ':', e.g. `prefix=job/`).
    (cd "$d" && INITIAL_NO_AUTH_ACTION_COUNT=0 exec "$py" "$_DRKIT_SCRIPTS/moto_server_sigv4.py" -H 127.0.0.1 -p "$1" \
        </dev/null >"$d/log" 2>&1) &
    _drkit_record moto $!
}

_drkit_launch_s3s() { # port
    local d="$_DRKIT_DIR/s3s"
    mkdir -p "$d/root"
    (cd "$d" && exec s3s-fs --host 127.0.0.1 --port "$1" --access-key drkit-s3s-access \
        --secret-key drkit-s3s-secret-key-0123456789 "$d/root" </dev/null >"$d/log" 2>&1) &
    _drkit_record s3s-fs $!
}

_drkit_pid_of() { # name
    local e
    for e in "${_DRKIT_PROCS[@]}"; do
        [[ ${e%% *} == "$1" ]] && { printf '%s\n' "${e#* }"; return 0; }
    done
    return 0
}

_drkit_ready_mongo() { # port t0
    _drkit_wait mongodb "$_DRKIT_DIR/mongo/log" "$(_drkit_pid_of mongodb)" _drkit_check_mongo "mongodb://127.0.0.1:$1" || return 1
    export DRKIT_TEST_MONGO_URL="mongodb://127.0.0.1:$1"
    _drkit_say "mongodb (secantusd-py) on 127.0.0.1:$1 ready ($(_drkit_elapsed "$2"))"
}

_drkit_ready_moto() { # port t0
    local ep="http://127.0.0.1:$1" log="$_DRKIT_DIR/moto/log" keys
    _drkit_wait moto "$log" "$(_drkit_pid_of moto)" _drkit_check_http "$ep/moto-api/" || return 1
    # Create the IAM user whose keys sign the tests' requests (see the notes at the top).
    if ! keys=$("$(_drkit_python)" - "$ep" 2>>"$log" <<'EOF'
import json, sys, urllib.request
import boto3
ep = sys.argv[1]
def reset_auth(value):  # text/plain: moto reads the raw body
    req = urllib.request.Request(ep + "/moto-api/reset-auth", data=value.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()
reset_auth("inf")
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="drkit-test")
iam.put_user_policy(UserName="drkit-test", PolicyName="drkit-test-all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="drkit-test")["AccessKey"]
reset_auth("0")
print(key["AccessKeyId"], key["SecretAccessKey"])
EOF
    ); then
        _drkit_fail moto "$log" "could not create the IAM user and access key"
        return 1
    fi
    local ak=${keys%% *} sk=${keys#* }
    _drkit_check_s3_sigv4 moto "$ep" "$ak" "$sk" "$log" || return 1
    export DRKIT_TEST_MOTO_ENDPOINT=$ep DRKIT_TEST_MOTO_ACCESS_KEY=$ak DRKIT_TEST_MOTO_SECRET_KEY=$sk
    _drkit_say "moto S3 on 127.0.0.1:$1 ready, SigV4 checked ($(_drkit_elapsed "$2"))"
}

_drkit_ready_s3s() { # port t0
    local ep="http://127.0.0.1:$1" log="$_DRKIT_DIR/s3s/log"
    _drkit_wait s3s-fs "$log" "$(_drkit_pid_of s3s-fs)" _drkit_check_http "$ep/" || return 1
    _drkit_check_s3_sigv4 s3s-fs "$ep" drkit-s3s-access drkit-s3s-secret-key-0123456789 "$log" || return 1
    export DRKIT_TEST_S3S_ENDPOINT=$ep DRKIT_TEST_S3S_ACCESS_KEY=drkit-s3s-access \
        DRKIT_TEST_S3S_SECRET_KEY=drkit-s3s-secret-key-0123456789
    _drkit_say "s3s-fs $(s3s-fs --version 2>/dev/null | awk '{print $2}') on 127.0.0.1:$1 ready, SigV4 checked ($(_drkit_elapsed "$2"))"
}

# ------------------------------------------------------------------------------ stop -------

_drkit_stop_pid() { # pid [starttime]: TERM, wait up to 10 s, KILL
    local pid=$1 st=${2:-} i
    kill -0 "$pid" 2>/dev/null || return 0
    if [[ -n $st && $(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) != "$st" ]]; then
        return 0 # PID reused by another process: not ours
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 0
}

_drkit_stop_pg_dir() { # run dir
    local data="$1/pg/data" pid
    [[ -f $data/postmaster.pid ]] || return 0
    _drkit_as_pg "$DRKIT_PG_BINDIR/pg_ctl" -D "$data" -m fast -w -t 20 -s stop >/dev/null 2>&1 && return 0
    pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
    [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true
    return 0
}

# Stops every server start_all started and removes the temp dir. Idempotent.
stop_all() {
    local e pid n=0
    if [[ -n $_DRKIT_DIR && $_DRKIT_PG_STARTED -eq 1 ]]; then
        _drkit_stop_pg_dir "$_DRKIT_DIR"
        n=$((n + 1))
    fi
    for e in "${_DRKIT_PROCS[@]}"; do # TERM all first, then wait: faster than one by one
        pid=${e#* }
        kill -TERM "$pid" 2>/dev/null || true
    done
    for e in "${_DRKIT_PROCS[@]}"; do
        _drkit_stop_pid "${e#* }"
        n=$((n + 1))
    done
    _DRKIT_PROCS=()
    _DRKIT_PG_STARTED=0
    if [[ -n $_DRKIT_DIR ]]; then
        if [[ ${DRKIT_TEST_KEEP_DIR:-0} == 1 ]]; then
            _drkit_say "kept $_DRKIT_DIR (DRKIT_TEST_KEEP_DIR=1)"
        else
            rm -rf "$_DRKIT_DIR"
        fi
        ((n > 0)) && _drkit_say "stopped $n server(s)"
        _DRKIT_DIR=""
    fi
    return 0
}

# A run killed with SIGKILL cannot run its trap: stop what it left (checked by PID start time).
_drkit_clean_stale() {
    local d owner st
    for d in "${TMPDIR:-/tmp}"/drkit-test-servers.*; do
        [[ -d $d && -f $d/owner ]] || continue
        read -r owner st <"$d/owner"
        if kill -0 "$owner" 2>/dev/null && [[ $(awk '{print $22}' "/proc/$owner/stat" 2>/dev/null) == "$st" ]]; then
            continue # that run is still going
        fi
        _drkit_say "cleaning up servers left by an earlier run in $d"
        _drkit_stop_pg_dir "$d"
        if [[ -f $d/pids ]]; then
            local name pid pst
            while read -r name pid pst; do
                [[ -n $pid ]] && _drkit_stop_pid "$pid" "$pst"
            done <"$d/pids"
        fi
        rm -rf "$d"
    done
}

_drkit_on_exit() {
    stop_all
    if [[ -n ${_DRKIT_PREV_EXIT_TRAP:-} ]]; then eval "$_DRKIT_PREV_EXIT_TRAP"; fi
}
_drkit_on_signal() { # signal exit-code
    trap - "$1"
    _drkit_say "got SIG$1, stopping servers"
    exit "$2" # the EXIT trap stops the servers
}

_drkit_install_traps() {
    local prev
    prev=$(trap -p EXIT)
    if [[ -n $prev && $prev != *_drkit_on_exit* ]]; then
        local -a parts
        eval "parts=($prev)" # trap -- 'command' EXIT
        _DRKIT_PREV_EXIT_TRAP=${parts[2]}
    fi
    trap _drkit_on_exit EXIT
    trap '_drkit_on_signal INT 130' INT
    trap '_drkit_on_signal TERM 143' TERM
    trap '_drkit_on_signal HUP 129' HUP
}

# --------------------------------------------------------------------------- external ------

_drkit_check_external() {
    local failed=0 url ep
    if [[ -n ${DRKIT_TEST_PG_URL:-} ]]; then
        export DRKIT_TEST_PG_BINDIR=${DRKIT_TEST_PG_BINDIR:-$DRKIT_PG_BINDIR}
        if _drkit_wait postgres "" "" _drkit_check_pg "$DRKIT_TEST_PG_URL"; then
            _drkit_say "postgres at $(sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$DRKIT_TEST_PG_URL") answers"
        else failed=1; fi
    else _drkit_say "DRKIT_TEST_PG_URL not set: postgres not provided"; fi
    if [[ -n ${DRKIT_TEST_MONGO_URL:-} ]]; then
        if _drkit_wait mongodb "" "" _drkit_check_mongo "$DRKIT_TEST_MONGO_URL"; then
            _drkit_say "mongodb at $DRKIT_TEST_MONGO_URL answers"
        else failed=1; fi
    else _drkit_say "DRKIT_TEST_MONGO_URL not set: mongodb not provided"; fi
    local v
    for v in MOTO S3S; do
        local e="DRKIT_TEST_${v}_ENDPOINT" a="DRKIT_TEST_${v}_ACCESS_KEY" s="DRKIT_TEST_${v}_SECRET_KEY"
        ep=${!e:-}
        if [[ -z $ep ]]; then _drkit_say "$e not set: ${v,,} S3 not provided"; continue; fi
        if _drkit_wait "${v,,}" "" "" _drkit_check_http "$ep/" &&
            _drkit_check_s3_sigv4 "${v,,}" "$ep" "${!a:-}" "${!s:-}" ""; then
            _drkit_say "${v,,} S3 at $ep answers, SigV4 checked"
        else failed=1; fi
    done
    _drkit_check_docker || failed=1
    _drkit_build_pg_image || failed=1
    _drkit_build_base_image || failed=1
    return "$failed"
}

# ------------------------------------------------------------------------------ start ------

_drkit_unset_exports() {
    unset DRKIT_TEST_PG_URL DRKIT_TEST_PG_BINDIR DRKIT_TEST_MONGO_URL DRKIT_TEST_MOTO_ENDPOINT \
        DRKIT_TEST_MOTO_ACCESS_KEY DRKIT_TEST_MOTO_SECRET_KEY DRKIT_TEST_S3S_ENDPOINT \
        DRKIT_TEST_S3S_ACCESS_KEY DRKIT_TEST_S3S_SECRET_KEY DRKIT_TEST_DOCKER DRKIT_TEST_COMPOSE \
        DRKIT_TEST_PG_IMAGE DRKIT_TEST_BASE_IMAGE DRKIT_TEST_SERVERS DRKIT_TEST_SERVERS_DIR
}

start_all() {
    local t0
    t0=$(_drkit_now)
    if [[ ${DRKIT_TEST_EXTERNAL:-0} == 1 ]]; then
        _drkit_say "DRKIT_TEST_EXTERNAL=1: starting nothing, checking the given servers"
        _drkit_resolve_python || return 1
        _drkit_check_external || return 1
        _drkit_export_tools
        export DRKIT_TEST_SERVERS=1
        return 0
    fi
    [[ -z $_DRKIT_DIR ]] || stop_all
    install_servers || return 1
    t0=$(_drkit_now) # start-up times below leave out installing
    _drkit_clean_stale
    _drkit_unset_exports # whatever an outer environment says, these are ours now

    _DRKIT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/drkit-test-servers.XXXXXX") || return 1
    chmod 755 "$_DRKIT_DIR" # the postgres user must reach its subdir
    printf '%s %s\n' "$$" "$(awk '{print $22}' /proc/$$/stat 2>/dev/null)" >"$_DRKIT_DIR/owner"
    export DRKIT_TEST_SERVERS_DIR=$_DRKIT_DIR
    _drkit_install_traps

    local ports pg_port mongo_port moto_port s3s_port
    ports=$(_drkit_free_ports 4) || { _drkit_say "FAILED: could not find free ports"; return 1; }
    read -r pg_port mongo_port moto_port s3s_port <<<"$ports"

    # Launch the three background servers first, then bring PostgreSQL up while they boot.
    if ! { _drkit_check_docker &&
        _drkit_build_pg_image &&
        _drkit_build_base_image &&
        _drkit_launch_mongo "$mongo_port" &&
        _drkit_launch_moto "$moto_port" &&
        _drkit_launch_s3s "$s3s_port" &&
        _drkit_start_postgres "$pg_port" &&
        _drkit_ready_mongo "$mongo_port" "$t0" &&
        _drkit_ready_s3s "$s3s_port" "$t0" &&
        _drkit_ready_moto "$moto_port" "$t0"; }; then
        stop_all
        _drkit_unset_exports
        return 1
    fi
    _drkit_export_tools
    export DRKIT_TEST_SERVERS=1
    _drkit_say "all servers ready in $(_drkit_elapsed "$t0") (logs in $_DRKIT_DIR)"
}

# -------------------------------------------------------------------------- executed -------

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    case "${1:-}" in
    run)
        shift
        [[ $# -gt 0 ]] || { echo "usage: bash scripts/servers.sh run CMD [ARGS...]" >&2; exit 2; }
        start_all || exit 1
        "$@"
        exit $?
        ;;
    check)
        start_all || exit 1
        env | grep -E '^DRKIT_(TEST_|PROMETHEUS=|PROMTOOL=)' | sort
        exit 0
        ;;
    install)
        install_servers
        exit $?
        ;;
    *)
        sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
fi
