#!/usr/bin/env bash
# What encryption at rest costs a PostgreSQL backup: `drkit backup` of a pgbench database
# without and with `encryption = { recipients = [...] }` (age, after zstd), two jobs of one
# config on the same source and the same local storage, in ONE run, ALTERNATING: each round
# runs both once (the order swaps every round, AB BA AB ...), DRKIT_BENCH_RUNS rounds
# (default 5), each run timed by hyperfine and its peak RSS taken by GNU time (%M).
#
#   bash bench/postgres-encryption.sh [SCALE]     # pgbench scale, default 50 (5 M accounts)
#
# Reports the ratio of the median wall times (goal: encrypted / plain <= 1.10) and the peak
# RSS of both (goal: encryption adds <= 8 MiB), the CPU seconds and the stored sizes. Then
# checks the encrypted archive: an age file that `drkit --identity KEY verify` checks fully.
#
# Uses the server of DRKIT_BENCH_PG_URL (+ DRKIT_TEST_PG_BINDIR) when set; otherwise starts
# its own PostgreSQL 15 on a free loopback port in a temp dir (as the `postgres` user when
# run as root) and stops it at the end. DRKIT_BENCH_BIN=PATH benchmarks that drkit binary
# instead of building target/release/drkit. Figures go to stdout; copy them into
# docs/benchmarks-encryption.md. Needs hyperfine, zstd, GNU time, age (age-keygen): installed
# with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-50}
BINDIR=${DRKIT_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}
RUNS=${DRKIT_BENCH_RUNS:-5}

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v zstd >/dev/null || need+=(zstd)
command -v age-keygen >/dev/null || need+=(age)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -n "${DRKIT_BENCH_BIN:-}" ]; then
  DRKIT=$DRKIT_BENCH_BIN
else
  cargo build --release -q -p drkit
  DRKIT=$PWD/target/release/drkit
fi

work=$(mktemp -d /var/tmp/drkit-bench-pgenc.XXXXXX)
source bench/pg-server.sh

db=bench_pgenc
echo "== preparing data (pgbench scale $SCALE)" >&2
psql_ postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
"$BINDIR/pgbench" -i -q -s "$SCALE" "$(url_of $db)" 2>&1 | tail -n 1 >&2
psql_ $db -c "VACUUM ANALYZE"
size=$(psql_ postgres -Atc "SELECT pg_size_pretty(pg_database_size('$db'))")

# The key: age-keygen writes the identity (mode 600) and prints the recipient on stderr.
age-keygen -o "$work/key.txt" 2>/dev/null
chmod 600 "$work/key.txt"
recipient=$(age-keygen -y "$work/key.txt")

cat > "$work/drkit.toml" <<TOML
[storage.local]
type = "local"
path = "$work/backups"

[job.plain]
source = { type = "postgres", url = "$(url_of $db)", bindir = "$BINDIR" }
storage = ["local"]

[job.encrypted]
source = { type = "postgres", url = "$(url_of $db)", bindir = "$BINDIR" }
storage = ["local"]
encryption = { recipients = ["$recipient"] }
TOML

{
echo "# PostgreSQL backup with and without encryption"
echo
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- server: PostgreSQL $(psql_ postgres -Atc 'show server_version'), $("$BINDIR/pg_dump" --version)"
echo "- drkit: $("$DRKIT" --version) ($DRKIT), zstd level 3, local storage (fsync on commit), sha256 of raw and stored bytes, exact row counts; the encrypted job adds age (X25519, one recipient) after zstd"
echo "- database: pgbench scale $SCALE, $size on disk; $RUNS alternating rounds (order swapped each round), each run after \`rm -rf\` of the storage"
echo
} > "$work/report.md"

cmd_of() { # job: the measured command (GNU time appends the peak RSS in KiB to rss.JOB)
  echo "/usr/bin/time -a -o $work/rss.$1 -f %M $DRKIT -q --config $work/drkit.toml backup $1"
}
echo "== warm-up: one backup of each job" >&2
for job in plain encrypted; do
  "$DRKIT" -q --config "$work/drkit.toml" backup "$job" >/dev/null
done
rm -rf "$work/backups"
: > "$work/rss.plain"
: > "$work/rss.encrypted"
for i in $(seq 1 "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then order="plain encrypted"; else order="encrypted plain"; fi
  args=()
  for job in $order; do args+=(-n "$job" "$(cmd_of "$job")"); done
  echo "== round $i/$RUNS: $order" >&2
  hyperfine --runs 1 --style basic --prepare "rm -rf $work/backups" \
    --export-json "$work/round.$i.json" "${args[@]}" >&2
done

# The stored archives of one more backup of each, and the encrypted one checked in full.
rm -rf "$work/backups"
"$DRKIT" -q --config "$work/drkit.toml" backup >/dev/null
plain=$(find "$work/backups" -name 'data.pgdump.zst' | head -n 1)
enc=$(find "$work/backups" -name 'data.pgdump.zst.age' | head -n 1)
head -c 21 "$enc" | grep -q '^age-encryption.org/v1' || { echo "error: $enc is not an age file" >&2; exit 1; }
"$DRKIT" --json --identity "$work/key.txt" --config "$work/drkit.toml" verify encrypted > "$work/verify.json"
"$DRKIT" --json --config "$work/drkit.toml" verify encrypted > "$work/verify-stored.json"
# The standard tools read it too: age -d | zstd -d gives the raw stream of the manifest.
by_hand=$(age -d -i "$work/key.txt" "$enc" | zstd -q -dc | sha256sum | cut -d' ' -f1)
python3 - "$(dirname "$enc")/manifest.json" "$by_hand" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["data"]["encryption"] == "age", m["data"]
assert m["data"]["raw_sha256"] == sys.argv[2], "age -d | zstd -d does not give the manifest's raw stream"
PY

python3 - "$work" "$RUNS" "$plain" "$enc" >> "$work/report.md" <<'PY'
import glob, json, os, statistics, sys
work, runs, plain_file, enc_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t = {"plain": [], "encrypted": []}
cpu = {"plain": [], "encrypted": []}
for i in range(1, runs + 1):
    for r in json.load(open(f"{work}/round.{i}.json"))["results"]:
        t[r["command"]].append(r["mean"])
        cpu[r["command"]].append(r["user"] + r["system"])
rss = {k: [int(x) for x in open(f"{work}/rss.{k}").read().split()] for k in t}
med = {k: statistics.median(v) for k, v in t.items()}
mib = 1024 * 1024
ratio = med["encrypted"] / med["plain"]
print("| job | median | runs (s, in order) | CPU s (median) | peak RSS (median, max) |")
print("|---|---|---|---|---|")
for k in ("plain", "encrypted"):
    print(f"| `drkit backup {k}` | {med[k]:.2f} s | " + ", ".join(f"{x:.2f}" for x in t[k])
          + f" | {statistics.median(cpu[k]):.2f} | {statistics.median(rss[k]) / 1024:.1f} MiB, {max(rss[k]) / 1024:.1f} MiB |")
print()
print(f"- encrypted / plain: **{ratio:.3f}x** the median wall time (goal: at most 1.10x): {'met' if ratio <= 1.10 else 'NOT met'}")
d_med = (statistics.median(rss["encrypted"]) - statistics.median(rss["plain"])) / 1024
d_max = (max(rss["encrypted"]) - max(rss["plain"])) / 1024
print(f"- peak RSS added by encryption: **{d_med:+.1f} MiB** (medians), {d_max:+.1f} MiB (maxima) (goal: at most 8 MiB): {'met' if max(d_med, d_max) <= 8 else 'NOT met'}")
cpu_d = statistics.median(cpu["encrypted"]) - statistics.median(cpu["plain"])
print(f"- CPU (user+sys of drkit and its pg_dump, client side): encryption adds {cpu_d:+.2f} s per backup (medians)")
ps, es = os.path.getsize(plain_file), os.path.getsize(enc_file)
raw = {k: json.load(open(os.path.join(os.path.dirname(f), "manifest.json")))["data"]["raw_size"]
       for k, f in (("plain", plain_file), ("encrypted", enc_file))}
print(f"- stored (one more backup of each): plain {ps / mib:.2f} MiB of {raw['plain'] / mib:.1f} MiB raw, "
      f"encrypted {es / mib:.2f} MiB of {raw['encrypted'] / mib:.1f} MiB raw ({es - ps:+d} bytes; age itself adds "
      f"its header and 16 bytes per 64 KiB chunk, about {200 + 16 * (es // 65536 + 1)} bytes here, the rest is two dumps compressing differently)")
v = json.load(open(f"{work}/verify.json"))
s = json.load(open(f"{work}/verify-stored.json"))
print(f"- check: the encrypted archive is an age file, `age -d | zstd -d` gives the manifest's raw sha256; `drkit --identity KEY verify encrypted`: checked={v[0]['report']['checked']}, ok={v[0]['ok']}; without the identity: checked={s[0]['report']['checked']}, ok={s[0]['ok']}")
print()
PY
cat "$work/report.md"
