#!/usr/bin/env bash
# make fuzz / make fuzz-smoke: every cargo-fuzz target in fuzz/ (see fuzz/fuzz_targets/), each for
# FUZZ_SECONDS (make fuzz: 180, make fuzz-smoke in CI: 30), seeded with the committed corpus in
# fuzz/corpus/TARGET. New inputs go to a scratch directory, so the committed corpora stay small
# (`make fuzz FUZZ_KEEP=1` adds them to fuzz/corpus instead). A crash or a broken property fails
# the run and leaves its input in fuzz/artifacts/TARGET/; replay it with
#   cargo +nightly fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-...
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-180}
CARGO_FUZZ_VERSION=0.13.1
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
fuzz() { cargo +nightly fuzz "$1" --fuzz-dir fuzz "${@:2}"; }
fuzz build -O
targets=$(fuzz list)
status=0
for t in $targets; do
    if [ -n "${FUZZ_KEEP:-}" ]; then
        out=fuzz/corpus/$t
        seeds=()
    else
        out=$(mktemp -d)
        seeds=("fuzz/corpus/$t")
    fi
    echo "fuzz: $t for ${FUZZ_SECONDS}s"
    if fuzz run -O "$t" "$out" "${seeds[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        > "fuzz/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/$t.log")
        echo "fuzz: $t ok, ${runs:-?} inputs, no crash"
    else
        echo "fuzz: $t FAILED; its log:" >&2
        tail -40 "fuzz/$t.log" >&2
        status=1
    fi
    [ -n "${FUZZ_KEEP:-}" ] || rm -rf "$out"
done
exit "$status"
