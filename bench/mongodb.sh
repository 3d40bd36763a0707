#!/usr/bin/env bash
# MongoDB dump memory benchmark: peak RSS of `drkit backup` of a MongoDB job must stay under
# 64 MiB for a collection of documents near the 16 MiB BSON limit and for one of a million
# small documents. Also wall time, documents/s, archive size, `drkit verify`, and the restore of
# the same backup into a renamed database (peak RSS informational, no target).
#   bash bench/mongodb.sh                              # 1,000,000 x ~100 B and 24 x 15 MiB
#   SMALL_DOCS=100000 LARGE_DOCS=4 bash bench/mongodb.sh   # smaller, quicker
# Figures go to stdout -> docs/benchmarks-mongodb.md. Starts its own SecantusDB on a free
# loopback port (seeding 1 M documents takes about 2 minutes: it inserts 7k-9k documents/s).
# Needs: secantusd-py + pymongo (bash scripts/servers.sh install), GNU time (apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL_DOCS=${SMALL_DOCS:-1000000}
LARGE_DOCS=${LARGE_DOCS:-24}
LARGE_MIB=${LARGE_MIB:-15}
TARGET_MIB=64
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
PY=$(python3 -c 'import sys; print(sys.executable)')
SECANTUSD="$(dirname "$PY")/secantusd-py"
[ -x "$SECANTUSD" ] || bash scripts/servers.sh install
cargo build --release -q -p drkit
DRKIT=$PWD/target/release/drkit
work=$(mktemp -d /var/tmp/drkit-bench-mongodb.XXXXXX)
mpid=""
cleanup() {
  if [ -n "$mpid" ] && kill "$mpid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$mpid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The server: SecantusDB (MongoDB wire protocol, WiredTiger), flags as scripts/servers.sh.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/mongo/data"
: >"$work/mongo/secantusd.toml"
(cd "$work/mongo" && exec "$SECANTUSD" --config "$work/mongo/secantusd.toml" --host 127.0.0.1 \
  --port "$port" --storage-path "$work/mongo/data" --cache-size 256M --log-level WARNING \
  </dev/null >"$work/mongo/log" 2>&1) &
mpid=$!
URL="mongodb://127.0.0.1:$port/?directConnection=true"
python3 - "$URL" "$mpid" <<'PY' || { echo "SecantusDB did not start:" >&2; tail -n 20 "$work/mongo/log" >&2; exit 1; }
import os, sys, time, pymongo
deadline = time.time() + 120
while True:
    try:
        pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=500).admin.command("ping")
        break
    except pymongo.errors.PyMongoError:
        os.kill(int(sys.argv[2]), 0)  # the server died: fail now
        if time.time() > deadline:
            sys.exit(1)
        time.sleep(0.2)
PY

echo "== machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== seeding SecantusDB on 127.0.0.1:$port: bench_small.c $SMALL_DOCS x ~100 B, bench_large.c $LARGE_DOCS x $LARGE_MIB MiB"
python3 - "$URL" "$SMALL_DOCS" "$LARGE_DOCS" "$LARGE_MIB" <<'PY'
import os, sys, time, pymongo
url, small, large, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = pymongo.MongoClient(url)
t0 = time.time()
coll = c.bench_small.c
for start in range(0, small, 10_000):
    coll.insert_many([{"_id": i, "n": i, "s": f"item {i:07d} " + "lorem ipsum dolor sit amet " * 2}
                      for i in range(start, min(start + 10_000, small))], ordered=False)
t1 = time.time()
print(f"   bench_small: {small} documents in {t1 - t0:.0f} s ({small / max(t1 - t0, 1e-9):.0f}/s)", flush=True)
coll = c.bench_large.c
size = mib * 1024 * 1024 - 64  # the document stays under the 16 MiB BSON limit
for i in range(large):
    coll.insert_one({"_id": i, "blob": os.urandom(size)})
t2 = time.time()
print(f"   bench_large: {large} documents in {t2 - t1:.0f} s", flush=True)
PY

failed=0
rows=()
# run NAME CMD... -> $rc, $rss (KiB), $wall (s): CMD under GNU time, its stderr kept in $work/NAME.err
run() {
  local name=$1
  shift
  if /usr/bin/time -f "%M %e" -o "$work/$name.time" "$@" >/dev/null 2>"$work/$name.err"; then rc=0; else rc=$?; fi
  # (GNU time writes "Command exited with non-zero status N" first when the command fails)
  read -r rss wall < <(tail -n 1 "$work/$name.time") || { rss=0; wall=0; }
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "   FAILED (exit $rc): $*" >&2
    tail -n 5 "$work/$name.err" >&2
  fi
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }       # KiB -> MiB
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }     # bytes -> MiB

for db in bench_small bench_large; do
  cat >"$work/$db.toml" <<TOML
[storage.local]
type = "local"
path = "$work/backups-$db"

[job.$db]
source = { type = "mongodb", url = "$URL", databases = ["$db"] }
storage = ["local"]
TOML
  cfg=(-q --config "$work/$db.toml")
  echo "== $db"
  run "$db-backup" "$DRKIT" "${cfg[@]}" backup
  [ "$rc" -eq 0 ] || { echo "drkit backup of $db failed" >&2; exit 1; }
  b_rss=$rss b_wall=$wall
  manifest=$(find "$work/backups-$db" -name manifest.json | head -n 1)
  read -r docs bytes raw <<<"$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["stats"]["documents"], m["stats"]["bytes"], m["data"]["raw_size"])' "$manifest")"
  archive=$(find "$work/backups-$db" -type f -name 'data.archive*' -printf '%s\n' | head -n 1)
  verdict=$([ "$b_rss" -lt $((TARGET_MIB * 1024)) ] && echo under || echo OVER)
  rate=$(awk -v d="$docs" -v w="$b_wall" 'BEGIN {printf "%.0f", (w > 0 ? d / w : 0)}')
  echo "   backup: peak RSS $(mib "$b_rss") MiB ($verdict the $TARGET_MIB MiB target), wall $b_wall s, $rate documents/s"
  echo "   $docs documents, $(mb "$bytes") MiB of BSON, archive $(mb "$raw") MiB raw, $(mb "$archive") MiB stored (zstd)"
  run "$db-verify" "$DRKIT" "${cfg[@]}" verify "$db"
  v_rc=$rc v_rss=$rss v_wall=$wall
  echo "   verify: exit $v_rc, peak RSS $(mib "$v_rss") MiB, wall $v_wall s"
  run "$db-restore" "$DRKIT" "${cfg[@]}" restore "$db" --to "$db=${db}_r"
  r_rc=$rc r_rss=$rss r_wall=$wall
  echo "   restore --to $db=${db}_r: exit $r_rc, peak RSS $(mib "$r_rss") MiB, wall $r_wall s"
  rows+=("| $db.c | $docs | $(mb "$bytes") MiB | **$(mib "$b_rss") MiB** ($verdict) | $b_wall s | $rate | $(mb "$archive") MiB | $v_rc | $(mib "$r_rss") MiB, $r_wall s (exit $r_rc) |")
done

echo
echo "== summary (load average at end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "| collection | documents | BSON | backup peak RSS (target < $TARGET_MIB MiB) | backup wall | docs/s | archive (zstd) | verify exit | restore renamed: peak RSS, wall |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$failed"
