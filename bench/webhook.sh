#!/usr/bin/env bash
# make bench-webhook: AdmissionReviews per second and latency percentiles over TLS keep-alive.
# Starts a release `webhook serve` with a throwaway certificate and drives it with wrk posting the
# plain-pod fixture (a full injection per request). Prints one summary line per connection count.
# Knobs (full / SMOKE=1): DURATION (10s / 1s), PORT (18443).
#
# smoke-expect: ^webhook bench: {n} CPUs
# smoke-expect: ^connections +reviews/s +p50_ms +p99_ms +errors$
# smoke-expect: ^1 +{n} +{n} +{n} +{n}$
# smoke-expect: ^8 +{n} +{n} +{n} +{n}$
# smoke-expect: ^32 +{n} +{n} +{n} +{n}$
# smoke-expect: ^webhook peak RSS: {n} MiB$
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
DURATION=${DURATION:-$(knob 10s 1s)}
bench_install wrk:wrk curl:curl openssl:openssl
bench_build
bin=${CARGO_TARGET_DIR:-target}/release/webhook
work=$(mktemp -d)
port=${PORT:-18443}
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

certs/make-certs.sh "$work" >/dev/null
TRELLIS_LOG_LEVEL=error "$bin" serve --listen "127.0.0.1:$port" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" &
pid=$!
for _ in $(seq 50); do curl -sk "https://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

body=$(tr -d '\n' < webhook/testdata/reviews/plain-pod.json | sed 's/\\/\\\\/g; s/"/\\"/g')
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "$body"
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
echo "webhook bench: $(nproc) CPUs, wrk 1 thread, TLS keep-alive, POST /mutate (plain pod, full injection), $DURATION each"
printf '%-12s %10s %10s %10s %8s\n' connections reviews/s p50_ms p99_ms errors
for c in 1 8 32; do
    line=$(wrk -t1 -c"$c" -d"$DURATION" -s "$work/post.lua" "https://127.0.0.1:$port/mutate" | grep '^RESULT')
    read -r _ rps p50 p99 errors <<<"$line"
    printf '%-12s %10s %10s %10s %8s\n' "$c" "${rps#rps=}" "${p50#p50_ms=}" "${p99#p99_ms=}" "${errors#errors=}"
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
echo "webhook peak RSS: $((rss / 1024)) MiB"
smoke_note
