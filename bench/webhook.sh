#!/usr/bin/env bash
# make bench-webhook: AdmissionReviews per second and latency percentiles over TLS keep-alive,
# then the memory hostile bodies cost.
# Starts a release `webhook serve` with a throwaway certificate and drives it with wrk posting the
# plain-pod fixture (a full injection per request). Prints one summary line per connection count.
# Then the hostile-body phase: for each shape of bench/hostile_bodies.py (3 MiB bodies: as many
# containers, ports or annotations as fit, a huge value, a 1 MiB misspelt key, huge strings, wide
# and deep nesting), a fresh webhook answers one such review and its peak RSS is reported; last,
# PARALLEL such bodies at once (the containers shape). Each row: the body's shape and size, the
# HTTP status, what the answer said, its size, the seconds it took, and the webhook's peak RSS.
# Knobs (full / SMOKE=1): DURATION (10s / 1s), PARALLEL (16 / 4), PORT (18443).
#
# smoke-expect: ^webhook bench: {n} CPUs
# smoke-expect: ^connections +reviews/s +p50_ms +p99_ms +errors$
# smoke-expect: ^1 +{n} +{n} +{n} +{n}$
# smoke-expect: ^8 +{n} +{n} +{n} +{n}$
# smoke-expect: ^32 +{n} +{n} +{n} +{n}$
# smoke-expect: ^webhook peak RSS: {n} MiB$
# smoke-expect: ^body +bytes +status +answer +answer_bytes +seconds +peak_rss_MiB$
# smoke-expect: ^containers +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^ports +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^annotations +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^long-value +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^misspelt-key +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^long-strings +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^wide-nesting +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^deep-nesting +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
# smoke-expect: ^containers\*{n} +{n} +{n} +[a-z-]+ +{n} +{n} +{n}$
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
DURATION=${DURATION:-$(knob 10s 1s)}
PARALLEL=${PARALLEL:-$(knob 16 4)}
bench_install wrk:wrk curl:curl openssl:openssl python3:python3
bench_build
bin=${CARGO_TARGET_DIR:-target}/release/webhook
work=$(mktemp -d)
port=${PORT:-18443}
cleanup() { stop_webhook; rm -rf "$work"; }
trap cleanup EXIT

# start_webhook: a fresh `webhook serve` on $port (its pid in $pid), once it answers /healthz.
start_webhook() {
    TRELLIS_LOG_LEVEL=error "$bin" serve --listen "127.0.0.1:$port" --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" &
    pid=$!
    for _ in $(seq 50); do curl -sk "https://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
}
stop_webhook() {
    if [ -n "${pid:-}" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
# peak_rss: the webhook's peak resident set so far, in MiB.
peak_rss() { echo $(($(awk '/VmHWM/ {print $2}' "/proc/$pid/status") / 1024)); }

# post BODY_FILE N: N reviews of BODY_FILE at once; prints "status answer answer_bytes seconds" of
# the last one. answer: allowed, denied (AdmissionReview answers), refused (400), too-large (413),
# failed (anything else: no answer, a timeout).
post() {
    local file=$1 n=$2 i out status answer secs
    for i in $(seq "$n"); do
        curl -sk -o "$work/answer.$i" -w '%{http_code} %{time_total}\n' --max-time 60 \
            -H 'Content-Type: application/json' --data-binary @"$file" \
            "https://127.0.0.1:$port/mutate" >"$work/status.$i" || true &
    done
    wait
    read -r status secs <"$work/status.$n"
    out="$work/answer.$n"
    touch "$out"
    case $status in
        200) if grep -q '"allowed":false' "$out"; then answer=denied; else answer=allowed; fi ;;
        400) answer=refused ;;
        413) answer=too-large ;;
        *) answer=failed ;;
    esac
    echo "$status $answer $(wc -c <"$out") $secs"
}

certs/make-certs.sh "$work" >/dev/null
start_webhook

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
echo "webhook peak RSS: $(peak_rss) MiB"
stop_webhook

echo
echo "hostile bodies: a fresh webhook per row answers one review (the last row: $PARALLEL at once)"
row='%-16s %8s %6s %-10s %12s %8s %12s\n'
# shellcheck disable=SC2059
printf "$row" body bytes status answer answer_bytes seconds peak_rss_MiB
for shape in $(python3 bench/hostile_bodies.py --list) "containers*$PARALLEL"; do
    n=1
    case $shape in *'*'*) n=${shape#*\*} ;; esac
    file="$work/${shape%%[*]*}.json"
    [ -f "$file" ] || python3 bench/hostile_bodies.py "${shape%%[*]*}" "$file"
    start_webhook
    read -r status answer answer_bytes secs <<<"$(post "$file" "$n")"
    # shellcheck disable=SC2059
    printf "$row" "$shape" "$(wc -c <"$file")" "$status" "$answer" "$answer_bytes" "$secs" "$(peak_rss)"
    stop_webhook
done
smoke_note
