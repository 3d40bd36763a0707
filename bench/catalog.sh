#!/usr/bin/env bash
# Catalog benchmark (issue 15, "the catalog at scale"): one job with 10,000 backups on moto S3
# (loopback, started here). Measures `drkit status` with an empty manifest cache (cold) and
# with it filled (warm), and one more `drkit backup` with 10 backups and with 10,000, against
# a floor measured in the same run: one plain listing of the job's keys (what any catalog of
# that bucket must read).
#   bash bench/catalog.sh              # figures go to stdout -> docs/benchmarks-catalog.md
#   COUNT=2000 bash bench/catalog.sh   # fewer backups, quicker
#   RUNS=5 bash bench/catalog.sh       # more runs per figure (the median is reported)
# Goals: status <= 10 s cold and <= 2 s warm; a backup with 10,000 within 1.2x of one with 10.
# Needs: python3 with moto[server] and boto3 (bash scripts/servers.sh install), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
COUNT=${COUNT:-10000}
RUNS=${RUNS:-3}
PY=${DRKIT_PYTHON:-python3}
"$PY" -c 'import moto.server, boto3' 2>/dev/null || bash scripts/servers.sh install >/dev/null
cargo build --release -q -p drkit
DRKIT=$PWD/target/release/drkit
work=$(mktemp -d /var/tmp/drkit-bench-catalog.XXXXXX)
motopid=""
trap '[ -n "$motopid" ] && kill "$motopid" 2>/dev/null; rm -rf "$work"' EXIT

# The server: moto (what the test suite runs), without auth (not what is measured here).
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work" && exec "$PY" "$repo/scripts/moto_server_sigv4.py" -H 127.0.0.1 -p "$port" \
  </dev/null >"$work/moto.log" 2>&1) &
motopid=$!
ep="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -s -o /dev/null "$ep/moto-api/" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
"$PY" -c "import boto3; boto3.client('s3', endpoint_url='$ep').create_bucket(Bucket='bench')"

# The source: a small SQLite database (the catalog is what is measured, not the dump).
"$PY" - "$work/src.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
c.executemany("INSERT INTO t(body) VALUES (?)", [("row %d" % i,) for i in range(2000)])
c.commit()
PY
cat >"$work/drkit.toml" <<TOML
[storage.s3]
type = "s3"
bucket = "bench"
endpoint = "$ep"
force_path_style = true
access_key_id = "bench"
secret_access_key = "bench-secret"

[job.db]
source = { type = "sqlite", path = "$work/src.db" }
storage = ["s3"]
max_age = "100000d"

[cache]
dir = "$work/cache"
TOML
dk() { "$DRKIT" -q --config "$work/drkit.toml" "$@"; }

# median wall time (s) of RUNS runs of "$@"; PREP (a shell snippet) runs before each
timed() {
  local times=() t0 t1 i
  for ((i = 0; i < RUNS; i++)); do
    [ -n "${PREP:-}" ] && eval "$PREP"
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')")
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}
floor() { # one plain listing of the job's keys, with the AWS SDK for Python
  "$PY" - "$ep" <<'PY'
import boto3, sys, time
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
t = time.time(); n = 0
for p in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="db/"):
    n += len(p.get("Contents", []))
print(f"{time.time() - t:.3f} {n}")
PY
}

for _ in $(seq 10); do dk backup >/dev/null; done
backup10=$(timed dk backup)
count_backups() { # "valid broken" in `drkit list --json`
  dk --json list db | "$PY" -c 'import json,sys; d=json.load(sys.stdin); b=sum(x.get("state")=="broken" for x in d); print(len(d)-b, b)'
}
read -r n_small _ < <(count_backups)

echo "== making $COUNT more backups (copies of one, 6 h apart, older than the real ones) ..."
t0=$(date +%s)
"$PY" bench/catalog_fill.py "$ep" bench db "$COUNT" 6
echo "   written in $(($(date +%s) - t0)) s"

read -r list_floor keys < <(floor)
read -r valid broken < <(count_backups)
cold=$(PREP='rm -rf "$work/cache"' timed dk status)
dk status >/dev/null || true
warm=$(timed dk status)
nocache=$(DRKIT_CACHE=off timed dk status)
backup_big=$(timed dk backup)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN {print (a <= b) ? "met" : "NOT met"}'; }
echo "== $(nproc) cores, moto S3 on loopback; median of $RUNS runs each"
echo "backups of the job: $valid valid, $broken broken (drkit list); $keys keys"
echo "floor: one plain listing of the job's $keys keys (boto3): ${list_floor} s"
echo "drkit status, cold (empty cache):      ${cold} s = $(ratio "$cold" "$list_floor") x the listing floor (goal <= 10 s: $(verdict "$cold" 10))"
echo "drkit status, warm (cache filled):     ${warm} s = $(ratio "$warm" "$list_floor") x the listing floor (goal <= 2 s: $(verdict "$warm" 2))"
echo "drkit status, cache off (DRKIT_CACHE=off): ${nocache} s"
echo "drkit backup with ~$n_small backups:   ${backup10} s"
echo "drkit backup with ~$((COUNT + n_small)) backups: ${backup_big} s = $(ratio "$backup_big" "$backup10") x (goal <= 1.2 x: $(awk -v r="$(ratio "$backup_big" "$backup10")" 'BEGIN {print (r <= 1.2) ? "met" : "NOT met"}'))"
echo "cache: $(find "$work/cache" -type f | wc -l) files, $(du -sh "$work/cache" | cut -f1)"
