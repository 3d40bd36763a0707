#!/usr/bin/env bash
# bench/docker.sh — backup and restore of a Docker volume of ~1 GB in 20,000 files, each drkit
# way next to its floor, measured side by side in one run:
#   direct backup  (mode = "direct": drkit reads the volume's directory)  vs host `tar -c | zstd -3 -T0`
#   engine backup  (mode = "engine": the Engine's archive endpoint)       vs the endpoint `| zstd -3 -T0`
#   restore        (`drkit restore --to NEW`, direct and through the endpoint) vs host `zstd -d | tar -x`
#                  (and `drkit verify`, the restore's first pass, on its own)
# Targets (issue 17): direct <= 1.15x, engine <= 1.1x, restore <= 1.3x their floors; peak RSS
# <= 64 MiB.
#
#   bash bench/docker.sh            # release build, 20000 files, 1 GB; prints a table
#   FILES=2000 SIZE_MB=100 bash bench/docker.sh   # smaller
#   SKIP_BUILD=1 bash bench/docker.sh             # the existing release binary
#
# Needs: the Docker engine, root (to read and write /var/lib/docker/volumes for the host
# floors), zstd, GNU time, python3. Builds the busybox test image like the tests do.
# Data: half the files random (incompressible), half text-like (compressible), sizes spread.
# Each backup runs twice, in turns; the second (warm page cache, like the first for all) is
# reported. Restores run once each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FILES=${FILES:-20000}
SIZE_MB=${SIZE_MB:-1024}
VOL=drkit-bench-$$
RESTORED=$VOL-restored
RESTORED_D=$VOL-restored-direct
HOSTCOPY=$VOL-hostcopy
WORK=$(mktemp -d /var/tmp/drkit-bench.XXXXXX)
cleanup() {
    docker volume rm -f "$VOL" "$RESTORED" "$RESTORED_D" "$HOSTCOPY" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf 'bench: %s\n' "$*" >&2; }

# SKIP_BUILD=1: use target/release/drkit as it is (e.g. while the tree does not build).
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release -q -p drkit
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

[job.direct]
source = { type = "docker-volume", volume = "$VOL", mode = "direct" }
storage = ["local"]

[job.engine]
source = { type = "docker-volume", volume = "$VOL", mode = "engine" }
storage = ["local"]
TOML

timed() { # command... -> "seconds maxrss_kb user sys"
    /usr/bin/time -o "$WORK/time" -f '%e %M %U %S' "$@" >/dev/null 2>"$WORK/stderr" || {
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
# The restore floor: the host's archive extracted into a new volume's directory, as root.
host_restore() { zstd -q -d -c "$WORK/host.tar.zst" | tar -C "$HOST_MP" -x --same-owner -p; }
export -f host engine host_restore; export MP WORK HELPER

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for run in 1 2; do
    say "run $run"
    H=$(timed bash -c host)
    E=$(timed bash -c engine)
    rm -f "$WORK/engine.tar.zst"
    rm -rf "$WORK/store"
    D=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q backup direct)
    DIRECT_STORED=$(du -sb "$WORK/store" | cut -f1)
    rm -rf "$WORK/store"
    G=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q backup engine)
done
docker rm -f "$HELPER" >/dev/null
HOST_STORED=$(stat -c %s "$WORK/host.tar.zst")
docker volume create "$HOSTCOPY" >/dev/null
HOST_MP=$(docker volume inspect -f '{{.Mountpoint}}' "$HOSTCOPY")
export HOST_MP
HR=$(timed bash -c host_restore)
# The loop left only the engine job's backup: one of the direct job to restore (untimed).
"$DRKIT" --config "$WORK/drkit.toml" -q backup direct >/dev/null
V=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q verify direct)
RD=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q restore direct --to "$RESTORED_D")
R=$(timed "$DRKIT" --config "$WORK/drkit.toml" -q restore engine --to "$RESTORED")
# The direct restore must reproduce what the host's tar extracted.
diff <(cd "$HOST_MP" && find . -printf '%p %y %m %U %G %T@ %s %l\n' | sort) \
     <(cd "$(docker volume inspect -f '{{.Mountpoint}}' "$RESTORED_D")" && find . -printf '%p %y %m %U %G %T@ %s %l\n' | sort) >/dev/null ||
    echo "WARNING: the direct restore's listing differs from the host's extraction" >&2
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$H" "$E" "$D" "$G" "$HR" "$R" "$RD" "$V" "$HOST_STORED" "$DIRECT_STORED" "$FILES" "$BYTES" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import sys
h, e, d, g, hr, r, rd, v = (list(map(float, a.split())) for a in sys.argv[1:9])
host_stored, direct_stored, files, size = map(int, sys.argv[9:13])
mb = lambda kb: f"{kb / 1024:.0f} MiB"
cpu = lambda t: f"{t[2]:.1f} + {t[3]:.1f}"
rows = [
    ("host `tar -c \\| zstd -3 -T0` (floor of direct)", h, "-", None),
    ("`drkit backup`, mode = direct", d, mb(d[1]), (d[0] / h[0], 1.15)),
    ("engine endpoint `\\| zstd -3 -T0` (floor of engine)", e, "-", None),
    ("`drkit backup`, mode = engine", g, mb(g[1]), (g[0] / e[0], 1.10)),
    ("host `zstd -d \\| tar -x` (floor of restore)", hr, "-", None),
    ("`drkit restore --to NEW`, mode = direct (verified, extracted, read back)", rd, mb(rd[1]), (rd[0] / hr[0], 1.30)),
    ("  of which: `drkit verify` alone (its first pass)", v, mb(v[1]), None),
    ("`drkit restore --to NEW`, mode = engine (endpoint, checked)", r, mb(r[1]), (r[0] / hr[0], 1.30)),
]
print("\n| what | seconds | CPU user + sys | peak RSS | ratio (target) |\n|---|---|---|---|---|")
for name, t, rss, ratio in rows:
    rt = "-" if ratio is None else f"{ratio[0]:.2f}x (<= {ratio[1]}x) {'met' if ratio[0] <= ratio[1] else 'MISSED'}"
    print(f"| {name} | {t[0]:.2f} | {cpu(t)} | {rss} | {rt} |")
peak = max(d[1], g[1], r[1], rd[1], v[1]) / 1024
print(f"\nvolume: {files} files, {size // 1000000} MB; stored: host {host_stored // 1000000} MB, drkit {direct_stored // 1000000} MB;"
      f" peak RSS {peak:.0f} MiB (target <= 64 MiB: {'met' if peak <= 64 else 'MISSED'});"
      f" load average before {sys.argv[13]}, after {sys.argv[14]}")
PY
