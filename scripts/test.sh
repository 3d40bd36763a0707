#!/usr/bin/env bash
# scripts/test.sh — the drkit test command (README, CI): bash scripts/test.sh [CARGO TEST ARGS...]
#
# 1. installs what is missing (rustfmt/clippy components; PostgreSQL 15, secantusdb, moto and
#    s3s-fs through scripts/servers.sh),
# 2. starts the test servers on 127.0.0.1 (scripts/servers.sh; exports DRKIT_TEST_*), and fails
#    at once when a required one cannot start: tests are never skipped for a missing server,
# 3. runs, in order: cargo fmt --all -- --check
#                    cargo clippy --workspace --all-targets -- -D warnings
#                    cargo build -p drkit            (the binary the e2e tests run)
#                    cargo nextest run --workspace "$@" + cargo test --doc
#                    (or cargo test --workspace "$@" without nextest / DRKIT_TEST_RUNNER=cargo)
#    Every stage runs even when an earlier one failed; the exit status is non-zero if any did.
# 4. stops the servers at exit, whatever happens (on Ctrl-C / SIGTERM / SIGHUP also the running
#    stage). After a SIGKILL, the next run stops the servers that run left (servers.sh).
#
# Examples:  bash scripts/test.sh
#            bash scripts/test.sh -p drkit-core            # extra args go to the test runner
#            bash scripts/test.sh -E 'test(/^mongodb::/)'  # nextest filter: one test file
#            DRKIT_TEST_RUNNER=cargo bash scripts/test.sh -- --nocapture
#            DRKIT_TEST_EXTERNAL=1 DRKIT_TEST_PG_URL=... bash scripts/test.sh   # own servers
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# In CI (a fresh clone, built once) incremental compilation only costs disk: off.
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

say() { printf 'test.sh: %s\n' "$*" >&2; }
elapsed() { printf '%ds' $((SECONDS - $1)); }

# --- toolchain bits ------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    say "FAILED: cargo not found"
    exit 1
fi
for comp in rustfmt clippy; do
    sub=${comp/rustfmt/fmt}
    if ! cargo "$sub" --version >/dev/null 2>&1; then
        say "installing rust component $comp"
        rustup component add "$comp" >/dev/null 2>&1 || { say "FAILED: rustup component add $comp"; exit 1; }
    fi
done

# --- servers ---------------------------------------------------------------------------------
# shellcheck source=scripts/servers.sh
source scripts/servers.sh
say "starting test servers"
if ! start_all; then
    say "FAILED: a required test server could not be started (see the line above); no test was run"
    exit 1
fi

# --- stages ----------------------------------------------------------------------------------
# Each stage runs in its own session (setsid) in the background while this shell waits, so that
# a signal to this script is handled at once: the stage's whole process group (cargo, test
# binaries and what they started) is stopped, then the EXIT trap of servers.sh stops the servers.
declare -a summary=()
status=0
STAGE_PID=""

# shellcheck disable=SC2317  # called from the signal traps
kill_stage() {
    [[ -n $STAGE_PID ]] || return 0
    local i
    kill -TERM -- "-$STAGE_PID" 2>/dev/null || kill -TERM "$STAGE_PID" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$STAGE_PID" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL -- "-$STAGE_PID" 2>/dev/null
    kill -KILL "$STAGE_PID" 2>/dev/null
    wait "$STAGE_PID" 2>/dev/null
    STAGE_PID=""
}
# shellcheck disable=SC2317  # called from the signal traps
on_signal() { # signal exit-code
    trap - "$1"
    say "got SIG$1: stopping the running stage and the servers"
    kill_stage
    exit "$2"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

if command -v setsid >/dev/null 2>&1; then SETSID=(setsid); else SETSID=(); fi

stage() { # name command...
    local name=$1 t0=$SECONDS rc
    shift
    say "==> $name: $*"
    "${SETSID[@]}" "$@" &
    STAGE_PID=$!
    wait "$STAGE_PID"
    rc=$?
    STAGE_PID=""
    if [[ $rc -eq 0 ]]; then
        say "<== $name: ok ($(elapsed "$t0"))"
        summary+=("$name ok")
    else
        say "<== $name: FAILED with exit code $rc ($(elapsed "$t0"))"
        summary+=("$name FAILED")
        status=1
    fi
}

stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --workspace --all-targets -- -D warnings
# The binary the end-to-end tests run, built once (tests/src/lib.rs: drkit_bin).
stage build cargo build -q -p drkit
[[ ${summary[-1]} == "build ok" ]] && export DRKIT_TEST_BIN_BUILT=1
# cargo-nextest when installed: every test in its own process, both cores busy across test
# binaries, and a hung test stopped after 10 minutes (.config/nextest.toml) instead of eating
# the CI's time. Doc tests run apart (nextest does not run them). Otherwise plain cargo test.
if [[ ${DRKIT_TEST_RUNNER:-} != cargo ]] && cargo nextest --version >/dev/null 2>&1; then
    stage test cargo nextest run --workspace --no-fail-fast "$@"
    stage doctest cargo test --workspace --doc
else
    stage test cargo test --workspace "$@"
fi

line=""
for s in "${summary[@]}"; do line+="${line:+, }$s"; done
say "$line"
exit "$status"
