#!/usr/bin/env bash
# S3 upload benchmark (issue 5): a 2 GB backup to a real S3 server (s3s-fs on loopback, SigV4
# checked). Measures drkit's peak RSS against the bound part_size x upload_concurrency + 32 MiB,
# and proves that nothing is written to local disk: every file drkit opens for writing is
# listed (strace), and must be none but /dev/null-like ones.
#   bash bench/s3.sh                    # 2 GB; figures go to stdout -> docs/benchmarks-s3.md
#   SIZE_MB=500 bash bench/s3.sh        # smaller, quicker
#   PART=8MiB CONC=2 bash bench/s3.sh   # another bound
# Needs: s3s-fs (bash scripts/servers.sh install), GNU time, strace, python3 (apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-2048}
PART=${PART:-16MiB}
CONC=${CONC:-4}
need=()
[ -x /usr/bin/time ] || need+=(time)
command -v strace >/dev/null || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v s3s-fs >/dev/null || bash scripts/servers.sh install
cargo build --release -q -p drkit
DRKIT=$PWD/target/release/drkit
work=$(mktemp -d /var/tmp/drkit-bench-s3.XXXXXX)
s3pid=""
trap '[ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null; rm -rf "$work"' EXIT

# The source: a SQLite database of SIZE_MB, half random bytes (incompressible), half text.
python3 - "$work/src.db" $((SIZE_MB * 1100)) <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
c.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, at TEXT, body TEXT, blob BLOB)")
c.execute("""WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM s WHERE x < ?)
  INSERT INTO events(at, body, blob)
  SELECT datetime(1700000000 + x, 'unixepoch'), printf('%.400c', char(65 + x % 26)) || x,
         randomblob(400) FROM s""", (n,))
c.commit()
PY

# The server: s3s-fs keeps a bucket as a folder.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3root/bench"
s3s-fs --host 127.0.0.1 --port "$port" --access-key bench-access --secret-key bench-secret-key-0123456789 \
  "$work/s3root" >"$work/s3s.log" 2>&1 &
s3pid=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

cat >"$work/drkit.toml" <<TOML
[storage.s3]
type = "s3"
bucket = "bench"
endpoint = "http://127.0.0.1:$port"
force_path_style = true
access_key_id = "bench-access"
secret_access_key = "bench-secret-key-0123456789"
part_size = "$PART"
upload_concurrency = $CONC

[job.db]
source = { type = "sqlite", path = "$work/src.db" }
storage = ["s3"]
TOML

mkdir -p "$work/tmp" "$work/cwd"
echo "== $(du -m "$work/src.db" | cut -f1) MB SQLite database -> s3s-fs, part_size $PART, upload_concurrency $CONC"
(cd "$work/cwd" && TMPDIR="$work/tmp" /usr/bin/time -f "%M %e" -o "$work/time" \
  strace -f -qq -e trace=openat,open,creat -o "$work/trace" \
  "$DRKIT" -q --config "$work/drkit.toml" backup >/dev/null)
read -r rss wall <"$work/time"
# strace's own RSS is in %M only if it were larger than drkit's (GNU time reports the largest
# process of the tree); strace stays under 10 MiB.
part_bytes=$(python3 -c "
import re,sys
v,u=re.fullmatch(r'(\d+)\s*(MiB|KiB|GiB|)', '$PART').groups()
print(int(v)*{'':1,'KiB':1024,'MiB':1<<20,'GiB':1<<30}[u])")
bound_kib=$(( (part_bytes * CONC + 32 * 1024 * 1024) / 1024 ))
stored=$(find "$work/s3root/bench" -type f -name 'data*' -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "peak RSS: $(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}') MiB (bound part_size x upload_concurrency + 32 MiB = $((bound_kib / 1024)) MiB): $([ "$rss" -le "$bound_kib" ] && echo within || echo OVER)"
echo "wall: ${wall} s; stored archive: $((stored / 1048576)) MiB; throughput $(awk -v m="$SIZE_MB" -v w="$wall" 'BEGIN {printf "%.0f", m / w}') MB/s"
written=$(grep -E 'O_(WRONLY|RDWR|CREAT)' "$work/trace" | grep -v ' = -1 ' |
  grep -oE '"[^"]+"' | tr -d '"' | grep -vE '^/dev/(null|tty|pts)|^/proc/|^/sys/' |
  grep -vF "$work/src.db" | sort -u || true)
echo "files opened for writing on local disk (besides the source database): ${written:-none}"
echo "files left in TMPDIR and the working folder: $(find "$work/tmp" "$work/cwd" -type f | wc -l)"
