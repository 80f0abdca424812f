#!/usr/bin/env bash
# make bench-instructions: instructions per proxied request, counted by callgrind, which (unlike
# time) does not drift with machine load. One proxy in gateway mode (--concurrency 1) in front of
# the in-repo bench_upstream; hey sends N1, then (in a fresh proxy) N2 keep-alive requests over 10
# connections; (Ir(N2) - Ir(N1)) / (N2 - N1) removes start-up and shutdown. Knobs: N1 (2000),
# N2 (12000).
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-2000}
N2=${N2:-12000}
TARGET=${CARGO_TARGET_DIR:-target}
for c in valgrind:valgrind hey:hey curl:curl; do
    if ! command -v "${c%%:*}" >/dev/null; then
        echo "bench: installing ${c#*:}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${c#*:}" >/dev/null
    fi
done
cargo build -q --release -p proxy --bin proxy --example bench_upstream
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

UP=127.0.0.1:18090 LISTEN=127.0.0.1:18091 ADMIN=127.0.0.1:19991
"$TARGET/release/examples/bench_upstream" "$UP" >/dev/null 2>&1 &
pids+=($!)

count() { # requests -> total instructions of one proxy process serving them
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
        "$TARGET/release/proxy" gateway --listen "$LISTEN" --upstream "$UP" \
        --admin-listen "$ADMIN" --concurrency 1 >/dev/null 2>"$work/valgrind.log" &
    local vp=$!
    for _ in $(seq 1 150); do
        curl -fso /dev/null "http://$ADMIN/ready" && break
        sleep 0.2
    done
    hey -n "$1" -c 10 "http://$LISTEN/" > "$work/hey.txt"
    grep -q '\[200\]' "$work/hey.txt" || { cat "$work/hey.txt" >&2; exit 1; }
    kill -INT "$vp"
    wait "$vp" || true
    local ir
    ir=$(grep -h '^summary:' "$work"/cg.* | awk '{print $2}')
    rm -f "$work"/cg.*
    echo "$ir"
}
a=$(count "$N1")
b=$(count "$N2")
echo "proxy instructions per request: $(( (b - a) / (N2 - N1) ))  (callgrind; $N1 requests: $a, $N2 requests: $b)"
