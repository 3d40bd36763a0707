#!/usr/bin/env bash
# The main job on the embedded default, no server needed: build drkit, make a sample SQLite
# database, back it up into a local folder, verify the backup, and list it.
#   bash scripts/quickstart.sh
# Everything lands in ./.drkit-demo/ (the config, the database, the backups).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo is not installed: install Rust (rustup) first" >&2; exit 2; }
echo "quickstart: building drkit (release; the first build compiles every dependency and takes a few minutes) ..." >&2
cargo build --release -p drkit
drkit=$PWD/target/release/drkit
demo=$PWD/.drkit-demo
mkdir -p "$demo"
if [ ! -f "$demo/app.db" ]; then
  python3 - "$demo/app.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
c.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customers, total NUMERIC, at TEXT)")
c.executemany("INSERT INTO customers(name, email) VALUES (?, ?)", [(f"customer {i}", f"c{i}@example.org") for i in range(5000)])
c.executemany("INSERT INTO orders(customer, total, at) VALUES (?, ?, datetime('now', ?))", [(i % 5000 + 1, i * 1.25, f"-{i} minutes") for i in range(50000)])
c.commit()
PY
fi
cat > "$demo/drkit.toml" <<TOML
# drkit quickstart: a SQLite database into a local folder.
[storage.local]
type = "local"
path = "$demo/backups"

[job.app]
source = { type = "sqlite", path = "$demo/app.db" }
storage = ["local"]
keep = { last = 7, daily = 14 }
TOML
"$drkit" --config "$demo/drkit.toml" backup
"$drkit" --config "$demo/drkit.toml" verify
"$drkit" --config "$demo/drkit.toml" list
echo
echo "Try a restore next: $drkit --config $demo/drkit.toml restore app --to $demo/restored.db"
