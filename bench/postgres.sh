#!/usr/bin/env bash
# PostgreSQL backup benchmark: `drkit backup` (zstd, local storage, exact row counts) against
# `pg_dump -Fc -Z0 > /dev/null` (the floor: pg_dump alone) and `pg_dump -Fp | gzip > file`
# (the usual cron script), and the shell pipeline `pg_dump -Fc -Z0 | zstd -3 -T2`, on a pgbench database and on a dataset that compresses poorly
# (random bytea and text). Also drkit's peak RSS (GNU time).
#
#   bash bench/postgres.sh [SCALE]     # pgbench scale, default 50 (5 M accounts, ~750 MB)
#
# Restore (same run, pgbench database only): `drkit restore` of the backup from the local
# folder against the floor `zstd -dc FILE | pg_restore --single-transaction --exit-on-error -d
# db` of the same stored archive, into a freshly created empty database each time, alternating
# the two DRKIT_BENCH_RESTORE_RUNS times (default 5): the ratio of the medians. Then one
# `drkit --json drill` of that database (its RTO and where the time went).
# DRKIT_BENCH_ONLY=restore skips the backup measurements (and the poorly compressible data).
#
# Uses the server of DRKIT_BENCH_PG_URL (+ DRKIT_TEST_PG_BINDIR) when set; otherwise starts
# its own PostgreSQL 15 on a free loopback port in a temp dir (as the `postgres` user when
# run as root) and stops it at the end. Figures go to stdout; copy them into
# docs/benchmarks-postgres.md. Needs hyperfine, zstd, GNU time (apt-installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-50}
BINDIR=${DRKIT_TEST_PG_BINDIR:-/usr/lib/postgresql/15/bin}
RUNS=${DRKIT_BENCH_RUNS:-3}
RESTORE_RUNS=${DRKIT_BENCH_RESTORE_RUNS:-5}
ONLY=${DRKIT_BENCH_ONLY:-all}
DBS="bench_pgbench bench_noise"
[ "$ONLY" = restore ] && DBS=bench_pgbench

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v zstd >/dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p drkit
DRKIT=$PWD/target/release/drkit

work=$(mktemp -d /var/tmp/drkit-bench-pg.XXXXXX)
source bench/pg-server.sh

echo "== preparing data (pgbench scale $SCALE, and ~500 MB of random bytea/text)" >&2
for db in $DBS; do
  psql_ postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
done
"$BINDIR/pgbench" -i -q -s "$SCALE" "$(url_of bench_pgbench)" 2>&1 | tail -n 1 >&2
if [ "$ONLY" != restore ]; then
psql_ bench_noise <<'SQL'
CREATE EXTENSION pgcrypto;
CREATE TABLE noise (id int PRIMARY KEY, blob bytea, txt text);
INSERT INTO noise SELECT i, gen_random_bytes(1000), encode(gen_random_bytes(400), 'base64')
FROM generate_series(1, 300000) AS i;
VACUUM ANALYZE noise;
SQL
fi
psql_ bench_pgbench -c "VACUUM ANALYZE"

{
echo "# PostgreSQL benchmark figures"
echo
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- server: PostgreSQL $(psql_ postgres -Atc 'show server_version'), $("$BINDIR/pg_dump" --version)"
echo "- drkit: release build, zstd level 3, local storage (fsync on commit), sha256 of raw and stored bytes, exact row counts"
echo
} > "$work/report.md"

for db in $DBS; do
  size=$(psql_ postgres -Atc "SELECT pg_size_pretty(pg_database_size('$db'))")
  cat > "$work/$db.toml" <<TOML
[storage.local]
type = "local"
path = "$work/backups"

[job.$db]
source = { type = "postgres", url = "$(url_of "$db")", bindir = "$BINDIR" }
storage = ["local"]
TOML
  sed 's/bindir = "\([^"]*\)" }/bindir = "\1", stats = "estimate" }/' "$work/$db.toml" > "$work/$db.estimate.toml"
  [ "$ONLY" = restore ] && continue
  echo "== $db ($size)" >&2
  /usr/bin/time -v "$DRKIT" -q --config "$work/$db.toml" backup 2> "$work/time.txt" >/dev/null
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time.txt")
  stored=$(find "$work/backups" -name 'data.pgdump.zst' -printf '%s\n' | head -n 1)
  raw=$(python3 -c 'import json, sys, glob; m = json.load(open(glob.glob(sys.argv[1] + "/*/*/manifest.json")[0])); print(m["data"]["raw_size"])' "$work/backups")
  rm -rf "$work/backups"
  hyperfine --warmup 1 --runs "$RUNS" --export-json "$work/$db.json" --export-markdown "$work/$db.md" \
    --prepare "rm -rf $work/backups $work/dump.sql.gz $work/dump.zst" \
    -n "pg_dump -Fc -Z0 > /dev/null" "$BINDIR/pg_dump -Fc -Z0 -d '$(url_of "$db")' > /dev/null" \
    -n "drkit backup" "$DRKIT -q --config $work/$db.toml backup" \
    -n "drkit backup (stats = estimate)" "$DRKIT -q --config $work/$db.estimate.toml backup" \
    -n "pg_dump -Fc -Z0 | zstd -3 -T2 > file" "$BINDIR/pg_dump -Fc -Z0 -d '$(url_of "$db")' | zstd -q -3 -T2 > $work/dump.zst" \
    -n "pg_dump -Fp | gzip > file" "$BINDIR/pg_dump -Fp -d '$(url_of "$db")' | gzip > $work/dump.sql.gz" >&2
  gz=$(stat -c %s "$work/dump.sql.gz")
  python3 - "$work/$db.json" "$db" "$size" "$rss" "$raw" "$stored" "$gz" >> "$work/report.md" <<'PY'
import json, sys
res = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
db, size, rss, raw, stored, gz = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
floor, drkit, cron = (res[k]["mean"] for k in ("pg_dump -Fc -Z0 > /dev/null", "drkit backup", "pg_dump -Fp | gzip > file"))
mib = 1024 * 1024
print(f"## {db} ({size} on disk, {raw / mib:.0f} MiB pg_dump custom archive)\n")
print("| command | mean | min | max |\n|---|---|---|---|")
for k, r in res.items():
    print(f"| `{k}` | {r['mean']:.2f} s | {r['min']:.2f} s | {r['max']:.2f} s |")
print()
print(f"- drkit / pg_dump -Z0 alone: **{drkit / floor:.2f}x** the wall time (goal: at most 1.15x)")
print(f"- pg_dump -Fp | gzip / drkit: **{cron / drkit:.2f}x** (goal: at least 1.4x)")
est = res["drkit backup (stats = estimate)"]["mean"]
print(f"- drkit with `stats = \"estimate\"` (no count(*) scan beside the dump) / pg_dump -Z0 alone: **{est / floor:.2f}x**")
shell = res["pg_dump -Fc -Z0 | zstd -3 -T2 > file"]["mean"]
print(f"- drkit / the shell pipeline pg_dump -Fc -Z0 | zstd -3 -T2 (same compression, no checksums, no counts, no fsync): **{drkit / shell:.2f}x**")
print(f"- CPU seconds (user+sys, client side; the server's COPY is not counted): " + ", ".join(f"`{k}` {r['user'] + r['system']:.2f}" for k, r in res.items()))
print(f"- archive: drkit {stored / mib:.1f} MiB vs gzip {gz / mib:.1f} MiB (goal: no larger); drkit peak RSS **{rss / 1024:.1f} MiB** (goal: under 64 MiB)")
print()
PY
done

# ---- restore: drkit against zstd -dc | pg_restore of the same stored archive -------------
echo "== restore of bench_pgbench, $RESTORE_RUNS alternating runs each" >&2
rm -rf "$work/backups"
cat >> "$work/bench_pgbench.toml" <<TOML

[job.bench_pgbench.drill]
checks = [ { sql = "SELECT count(*) FROM pgbench_accounts", min = 1 } ]
TOML
"$DRKIT" -q --config "$work/bench_pgbench.toml" backup
stored=$(find "$work/backups" -name 'data.pgdump.zst' | head -n 1)
fresh() { psql_ postgres -c "DROP DATABASE IF EXISTS bench_restore WITH (FORCE)" -c "CREATE DATABASE bench_restore"; }
now() { date +%s.%N; }
: > "$work/restore.tsv"
for i in $(seq 1 "$RESTORE_RUNS"); do
  sync
  fresh
  t0=$(now)
  zstd -q -dc "$stored" | "$BINDIR/pg_restore" --no-password --exit-on-error --single-transaction -d "$(url_of bench_restore)"
  t1=$(now)
  echo "floor	$i	$(echo "$t1 - $t0" | bc)" >> "$work/restore.tsv"
  sync
  fresh
  t0=$(now)
  "$DRKIT" -q --config "$work/bench_pgbench.toml" restore bench_pgbench --to bench_restore >/dev/null
  t1=$(now)
  echo "drkit	$i	$(echo "$t1 - $t0" | bc)" >> "$work/restore.tsv"
done
"$DRKIT" --json --config "$work/bench_pgbench.toml" restore bench_pgbench --to bench_restore --force > "$work/restore.json"
psql_ postgres -c "DROP DATABASE IF EXISTS bench_restore WITH (FORCE)"
"$DRKIT" --json --config "$work/bench_pgbench.toml" drill bench_pgbench > "$work/drill.json"
python3 - "$work/restore.tsv" "$work/restore.json" "$work/drill.json" "$stored" "$SCALE" >> "$work/report.md" <<'PY'
import json, os, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
t = {"floor": [], "drkit": []}
for name, _, secs in rows:
    t[name].append(float(secs))
restore = json.load(open(sys.argv[2]))
drill = json.load(open(sys.argv[3]))[0]["report"]
mib = 1024 * 1024
f, d = statistics.median(t["floor"]), statistics.median(t["drkit"])
print(f"## Restore of bench_pgbench (scale {sys.argv[5]}, {os.path.getsize(sys.argv[4]) / mib:.1f} MiB stored zstd archive)\n")
print("| command | median | runs |\n|---|---|---|")
print(f"| `zstd -dc FILE \\| pg_restore --single-transaction --exit-on-error -d db` | {f:.2f} s | " + ", ".join(f"{x:.2f}" for x in t["floor"]) + " |")
print(f"| `drkit restore JOB --to db` | {d:.2f} s | " + ", ".join(f"{x:.2f}" for x in t["drkit"]) + " |")
print()
print(f"- drkit / the floor: **{d / f:.2f}x** the median wall time (goal: at most 1.05x)")
print(f"- drkit's restore timings (one more run, --json): {json.dumps(restore.get('restore', restore).get('timings', {}))}")
tm = drill.get("timings") or {}
print(f"- drill (`drkit --json drill bench_pgbench`, scratch database beside the source, one count check): ok={drill.get('ok')}, RTO **{drill.get('duration_ms', 0) / 1000:.2f} s** = download {tm.get('download_ms')} ms + restore {tm.get('restore_ms')} ms + checks {tm.get('checks_ms')} ms")
print()
PY
cat "$work/report.md"
