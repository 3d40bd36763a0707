#!/usr/bin/env bash
# bench/docker.sh — backup (and restore) of a Docker volume of ~1 GB in 20,000 files:
# `drkit backup` (Engine archive endpoint -> tar scan -> zstd -3 -> local storage) against the
# host doing `tar -c | zstd -3 -T0` straight from the volume's directory.
#
#   bash bench/docker.sh            # release build, 20000 files, 1 GB; prints a table
#   FILES=2000 SIZE_MB=100 bash bench/docker.sh   # smaller
#
# Needs: the Docker engine, root (to read /var/lib/docker/volumes for the host baseline),
# zstd, GNU time, python3. Builds the busybox test image like the tests do (busybox-static).
# Data: half the files random (incompressible), half text-like (compressible), sizes spread.
# Each command runs twice; the second (warm page cache, like the first for both) is reported.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FILES=${FILES:-20000}
SIZE_MB=${SIZE_MB:-1024}
VOL=drkit-bench-$$
RESTORED=$VOL-restored
WORK=$(mktemp -d /var/tmp/drkit-bench.XXXXXX)
cleanup() {
    docker volume rm -f "$VOL" "$RESTORED" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf 'bench: %s\n' "$*" >&2; }

cargo build --release -q -p drkit
DRKIT=$PWD/target/release/drkit

if ! docker image inspect drkit-test-busybox >/dev/null 2>&1; then
    [[ -x /bin/busybox ]] || apt-get install -y -q busybox-static >/dev/null
    root=$WORK/rootfs
    mkdir -p "$root/bin"
    cp /bin/busybox "$root/bin/"
    for a in sh cp true; do ln -s busybox "$root/bin/$a"; done
    tar -C "$root" -c . | docker import - drkit-test-busybox >/dev/null
fi

say "generating $FILES files, $SIZE_MB MB"
python3 - "$WORK/src" "$FILES" "$SIZE_MB" <<'PY'
import os, random, sys
root, files, size_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
avg = size_mb * 1024 * 1024 // files
words = [b"alpha", b"beta", b"gamma", b"delta", b"drkit", b"volume", b"backup", b"\n"]
for i in range(files):
    d = os.path.join(root, f"d{i % 200:03d}", f"s{i % 7}")
    os.makedirs(d, exist_ok=True)
    n = max(1, int(avg * rnd.uniform(0.2, 1.8)))
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        if i % 2:
            f.write(os.urandom(n))
        else:
            f.write(b" ".join(rnd.choice(words) for _ in range(n // 5))[:n])
PY
docker volume create "$VOL" >/dev/null
docker run --rm --network none -v "$VOL:/data" -v "$WORK/src:/src:ro" drkit-test-busybox /bin/busybox cp -a /src/. /data/
rm -rf "$WORK/src"
MP=$(docker volume inspect -f '{{.Mountpoint}}' "$VOL")
BYTES=$(du -sb "$MP" | cut -f1)

cat > "$WORK/drkit.toml" <<TOML
[storage.local]
type = "local"
path = "$WORK/store"

[job.bench]
source = { type = "docker-volume", volume = "$VOL" }
storage = ["local"]
TOML

timed() { # command... -> "seconds maxrss_kb"
    /usr/bin/time -o "$WORK/time" -f '%e %M' "$@" >/dev/null 2>"$WORK/stderr" || {
        cat "$WORK/stderr" >&2
        exit 1
    }
    tail -1 "$WORK/time"
}
host() { tar -C "$MP" -c . | zstd -q -3 -T0 > "$WORK/host.tar.zst"; }
# The engine's own floor: its archive endpoint piped into the same zstd (no drkit).
HELPER=$(docker create --network none -v "$VOL:/data:ro" drkit-test-busybox true)
engine() {
    curl -sf --unix-socket /var/run/docker.sock "http://docker/containers/$HELPER/archive?path=/data/." |
        zstd -q -3 -T0 > "$WORK/engine.tar.zst"
}
export -f host engine; export MP WORK HELPER

for run in 1 2; do
    H=$(timed bash -c host)
    rm -f "$WORK/host.tar.zst"
    E=$(timed bash -c engine)
    rm -f "$WORK/engine.tar.zst"
    rm -rf "$WORK/store"
    D=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q backup bench)
done
docker rm -f "$HELPER" >/dev/null
host_s=${H%% *}
engine_s=${E%% *}
drkit_s=${D%% *}
drkit_rss=${D##* }
STORED=$(du -sb "$WORK/store" | cut -f1)
bash -c host
HOST_STORED=$(stat -c %s "$WORK/host.tar.zst")
R=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q restore bench --to "$RESTORED")
restore_s=${R%% *}
restore_rss=${R##* }
ratio=$(python3 -c "print(f'{$drkit_s / $host_s:.2f}')")

printf '\n| what | seconds | peak RSS | stored |\n|---|---|---|---|\n'
printf '| host `tar -c | zstd -3 -T0` | %s | - | %s MB |\n' "$host_s" "$((HOST_STORED / 1000000))"
printf '| engine archive endpoint `| zstd -3 -T0` (no drkit) | %s | - | - |\n' "$engine_s"
printf '| `drkit backup` (docker-volume, zstd 3) | %s | %s MB | %s MB |\n' "$drkit_s" "$((drkit_rss / 1024))" "$((STORED / 1000000))"
printf '| `drkit restore --to` (new volume, checked) | %s | %s MB | - |\n' "$restore_s" "$((restore_rss / 1024))"
printf '\nvolume: %s files, %s MB; drkit backup / host = %sx (target <= 1.3x); load average: %s\n' \
    "$FILES" "$((BYTES / 1000000))" "$ratio" "$(cut -d' ' -f1-3 /proc/loadavg)"
