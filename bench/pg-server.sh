# Sourced by the PostgreSQL benchmarks (bench/postgres.sh, bench/postgres-encryption.sh), after
# they set BINDIR and `work` (a temp dir, removed at exit): the server of DRKIT_BENCH_PG_URL,
# or its own PostgreSQL 15 on a free loopback port in "$work/pg" (as the `postgres` user when
# run as root), stopped at exit. Defines BASE, PGPASSWORD, url_of DB and psql_ DB ARGS...
chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  if [ -f "$work/pg/data/postmaster.pid" ]; then
    as_pg "$BINDIR/pg_ctl" -D "$work/pg/data" -m fast -w -s stop || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${DRKIT_BENCH_PG_URL:-}" ]; then
  BASE=$DRKIT_BENCH_PG_URL
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$work/pg"
  echo bench-pw > "$work/pg/pw"
  [ "$(id -u)" -eq 0 ] && chown -R postgres: "$work/pg"
  as_pg "$BINDIR/initdb" -D "$work/pg/data" -U drkit --pwfile="$work/pg/pw" --auth=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >> "$work/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work/pg'
shared_buffers = 256MB
max_wal_size = 4GB
EOF
  as_pg "$BINDIR/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -s start
  BASE=postgres://drkit:bench-pw@127.0.0.1:$port/postgres
fi
url_of() { echo "${BASE%/*}/$1"; }
export PGPASSWORD
PGPASSWORD=$(python3 -c 'import sys, urllib.parse as u; print(u.unquote(u.urlparse(sys.argv[1]).password or ""))' "$BASE")
psql_() { "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d "$(url_of "$1")" "${@:2}"; }
