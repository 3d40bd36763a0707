#!/usr/bin/env bash
# SQLite backup benchmark: drkit vs `cp` and `sqlite3 .backup` (+ zstd), and peak RSS of drkit
# on a 200 MB and a 1 GB database (memory must not grow with the data).
#   bash bench/sqlite.sh            # figures go to stdout; copy them into docs/benchmarks-sqlite.md
# Needs: hyperfine, sqlite3, zstd, GNU time (installed with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v zstd >/dev/null || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p drkit
DRKIT=$PWD/target/release/drkit
work=$(mktemp -d /var/tmp/drkit-bench-sqlite.XXXXXX)
trap 'rm -rf "$work"' EXIT

make_db() { # path rows: half random bytes, half repetitive text (compresses like real data)
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, at TEXT, kind TEXT, body TEXT, blob BLOB)")
c.execute("CREATE INDEX events_at ON events(at)")
c.execute("""WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x < ?)
  INSERT INTO events(at, kind, body, blob)
  SELECT datetime(1700000000 + x, 'unixepoch'), 'kind-' || (x % 17),
         printf('%.400c', char(65 + x % 26)) || x, randomblob(400) FROM s""", (n,))
c.commit()
PY
}

for size in 200 1000; do
  db=$work/db$size.sqlite
  make_db "$db" $((size * 1100))
  cat > "$work/drkit$size.toml" <<TOML
[storage.local]
type = "local"
path = "$work/backups"
[job.db]
source = { type = "sqlite", path = "$db" }
storage = ["local"]
TOML
  echo "== $(du -m "$db" | cut -f1) MB database"
  /usr/bin/time -f "drkit backup peak RSS: %M KiB, wall %e s" "$DRKIT" -q --config "$work/drkit$size.toml" backup >/dev/null
  rm -rf "$work/backups"
done

db=$work/db1000.sqlite
echo "== timing on the 1 GB database (ratios are what matter; absolute times are noise here)"
hyperfine --warmup 1 --runs 3 --export-markdown "$work/hf.md" \
  --prepare "rm -rf $work/backups $work/copy $work/copy.zst" \
  -n cp "cp $db $work/copy" \
  -n "sqlite3 .backup" "sqlite3 $db '.backup $work/copy'" \
  -n "sqlite3 .backup + zstd -3 -T0" "sqlite3 $db '.backup $work/copy' && zstd -q -3 -T0 $work/copy -o $work/copy.zst" \
  -n "drkit backup (zstd, sha256 x2, fsync)" "$DRKIT -q --config $work/drkit1000.toml backup"
cat "$work/hf.md"
