#!/usr/bin/env bash
# make bench-h2: HTTP/2 through a Trellis proxy pair against HAProxy and nginx pairs (issue 14),
# on one machine, in one run, driven by h2load (nghttp2-client).
#
# The sidecar-pair position of bench/run.sh's table 1, on loopback: h2load -> proxy A -> proxy B ->
# upstream, every hop cleartext HTTP/2 with prior knowledge (h2c). One upstream for every
# contender: nginx on a `listen ... http2` port answering a 1 KiB body, its
# http2_max_concurrent_streams raised from 128 to 2048 so that it bounds none of the pairs (Trellis
# opens one HTTP/2 connection per upstream host and holds the streams past the peer's limit inside
# it, where HAProxy and nginx open more connections: at 128, only 128 of the rss_Ns streams would
# reach the upstream through Trellis). Each proxy one worker thread. Trellis: two `proxy gateway`s
# (the listener detects the HTTP/2 preface; streams go upstream over pooled HTTP/2 connections),
# pool limits far above the streams in flight. HAProxy: `bind ... proto h2`, `server ... proto h2`.
# nginx: `listen ... http2` and `grpc_pass`, its only HTTP/2 upstream module (it carries any
# request, not only gRPC, one stream per upstream connection), upstream connections kept alive.
#
# Figures per contender:
# - streams/s: at saturation, h2load -t1 -cCONNS -mSTREAMS for DURATION after WARMUP (the req/s it
#   prints);
# - p99_ms at RATE streams/s: h2load --rps over RATE_CONNS connections opened 1 ms apart, RATE x
#   RATE_SECONDS streams. h2load's rps timer ticks every 10 ms, so each connection sends
#   RATE/RATE_CONNS/100 streams a tick, the connections' ticks staggered by the 1 ms. Latency per
#   stream from h2load's --log-file (microseconds, from the stream's submission to the end of its
#   answer; submissions are never held back, -m100 being far above the streams in flight);
# - vCPU/kstreams/px: proxy on-CPU seconds (/proc/PID/task/*/schedstat, proxies only) per 1000
#   streams answered during the fixed-rate run, per proxy;
# - rss_Ns: RSS with HOLD streams open through the pair, per proxy (averaged over the pair: both
#   hold every stream). h2load opens HOLD streams over HOLD_CONNS connections (100 a connection by
#   default, within every contender's default per-connection limit) asking /slow, which the
#   upstream proxies (HTTP/1) to a listener that never accepts: each stream waits for its answer's
#   headers. The RSS is read once all HOLD requests reached that listener (its accept queue holds
#   HOLD).
# Then trellis against the best peer on each figure (issue 14's goal: ahead of it on each).
#
# The machine may be shared: streams/s, latency and CPU are measured in ROUNDS rounds, the
# contenders interleaved, so a burst of outside load hits all of them alike; streams/s shows the
# best round, latency and CPU the median round, each with the spread. h2load's failures (failed,
# errored, timed out, 4xx, 5xx) are counted in every run and printed per contender.
# Knobs (full / SMOKE=1): ROUNDS (3 / 1), WARMUP (2s / 1s), DURATION (10s / 1s), CONNS (10),
# STREAMS (10), RATE (1000), RATE_SECONDS (10 / 1), RATE_CONNS (10), HOLD (1000 / 100),
# HOLD_CONNS (10), CONTENDERS ("direct trellis haproxy nginx").
#
# smoke-expect: ^Table: HTTP/2 through a sidecar pair \(h2load
# smoke-expect: ^contender +streams/s +p99_ms +vCPU/kstreams/px +rss_[0-9]+s$
# smoke-expect: ^direct +{n} +{n} +- +-$
# smoke-expect: ^trellis +{n} +{n} +{n} +{n}M$
# smoke-expect: ^haproxy +{n} +{n} +{n} +{n}M$
# smoke-expect: ^nginx +{n} +{n} +{n} +{n}M$
# smoke-expect: ^  throughput: {n}x the faster peer
# smoke-expect: ^  p99 at {n} streams/s: {n} ms vs best peer {n} ms
# smoke-expect: ^  CPU: {n} vCPU/kstreams/proxy vs best peer {n}
# smoke-expect: ^  RSS with {n} streams open: {n}M vs best peer {n}M
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${ROUNDS:-$(knob 3 1)}
WARMUP=${WARMUP:-$(knob 2s 1s)}
DURATION=${DURATION:-$(knob 10s 1s)}
RATE_SECONDS=${RATE_SECONDS:-$(knob 10 1)}
HOLD=${HOLD:-$(knob 1000 100)}
CONNS=${CONNS:-10}
STREAMS=${STREAMS:-10}
RATE=${RATE:-1000}
RATE_CONNS=${RATE_CONNS:-10}
HOLD_CONNS=${HOLD_CONNS:-10}
CONTENDERS=${CONTENDERS:-"direct trellis haproxy nginx"}
TARGET=${CARGO_TARGET_DIR:-target}
bench_install haproxy:haproxy nginx:nginx h2load:nghttp2-client curl:curl ss:iproute2 python3:python3
bench_build
PROXY=$TARGET/release/proxy

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Ports of their own (bench/run.sh uses 18xxx), so that both can run on one machine.
UP=28080 HOLE=28099

# Starts a process in the background; its pid is left in $last.
start() { "$@" >>"$work/procs.log" 2>&1 & last=$!; pids+=("$last"); }
wait_url() {
    for _ in $(seq 100); do
        curl -s --http2-prior-knowledge -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "bench: nothing answers HTTP/2 on $1" >&2
    return 1
}

start nginx -c "$(h2_nginx_conf "$work/upstream" 127.0.0.1:$UP "" "$HOLE")"
wait_url "http://127.0.0.1:$UP/"

declare -A FRONT PROC
launch() { # contender -> sets FRONT[c] and PROC[c] ("pid pid")
    case $1 in
    direct) FRONT[direct]=$UP PROC[direct]="" ;;
    trellis)
        local limits=(--concurrency 1 --max-requests 100000 --max-pending-requests 100000
            --request-timeout 300s)
        start "$PROXY" gateway --listen 127.0.0.1:28102 --upstream 127.0.0.1:$UP \
            --admin-listen 127.0.0.1:29902 "${limits[@]}"
        local b=$last
        start "$PROXY" gateway --listen 127.0.0.1:28101 --upstream 127.0.0.1:28102 \
            --admin-listen 127.0.0.1:29901 "${limits[@]}"
        FRONT[trellis]=28101 PROC[trellis]="$last $b" ;;
    haproxy)
        local dir="$work/haproxy" b
        mkdir -p "$dir"
        haproxy_cfg "$dir/a.cfg" "127.0.0.1:28201 proto h2" "127.0.0.1:28202 proto h2"
        haproxy_cfg "$dir/b.cfg" "127.0.0.1:28202 proto h2" "127.0.0.1:$UP proto h2"
        start haproxy -db -f "$dir/b.cfg"
        b=$last
        start haproxy -db -f "$dir/a.cfg"
        FRONT[haproxy]=28201 PROC[haproxy]="$last $b" ;;
    nginx)
        local b
        start nginx -c "$(h2_nginx_conf "$work/nginx-b" 127.0.0.1:28302 127.0.0.1:$UP)"
        b=$last
        start nginx -c "$(h2_nginx_conf "$work/nginx-a" 127.0.0.1:28301 127.0.0.1:28302)"
        FRONT[nginx]=28301 PROC[nginx]="$last $b" ;;
    esac
    wait_url "http://127.0.0.1:${FRONT[$1]}/"
}

line() { printf '%-9s %10s %8s %17s %10s\n' "$@"; }
median() { tr ' ' '\n' <<<"$1" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; }

# From h2load's summary on stdin: the streams that did not succeed (failed, which counts the
# errored and timed-out ones, or answered 4xx or 5xx); the 2xx answers.
h2_bad() { awk '/^requests:/ { b += $10 } /^status codes:/ { b += $7 + $9 } END { print b + 0 }'; }
h2_ok() { awk '/^status codes:/ { print $3 }'; }

saturate() { # url -> "streams/s bad"
    local out
    out=$(h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$DURATION" --warm-up-time="$WARMUP" "$1")
    echo "$(awk '/^finished in/ { printf "%.0f", $4 }' <<<"$out") $(h2_bad <<<"$out")"
}
# rate_run url procs... -> "p99_ms vcpu_per_kstreams_per_proxy bad" ("-" CPU without procs)
rate_run() {
    local url=$1 out t0 t1 ok cpu=- p99
    shift
    [ $# -gt 0 ] && t0=$(cpu_ns "$@")
    out=$(h2load -t1 -c"$RATE_CONNS" -r1 --rate-period=1ms -m100 -n$((RATE * RATE_SECONDS)) \
        --rps="$(awk -v r="$RATE" -v c="$RATE_CONNS" 'BEGIN { print r / c }')" \
        --log-file="$work/rate.log" "$url")
    ok=$(h2_ok <<<"$out")
    if [ $# -gt 0 ]; then
        t1=$(cpu_ns "$@")
        # per proxy, per 1000 streams answered
        cpu=$(awk -v d=$((t1 - t0)) -v n=$# -v k="$ok" 'BEGIN { printf "%.4f", (d / 1e9 / n) / (k / 1000) }')
    fi
    # columns: start (us since the epoch), status (-1: failed), microseconds to the answer's end
    p99=$(awk '$2 >= 200 && $2 < 300 { print $3 }' "$work/rate.log" | sort -n |
        awk '{ v[NR] = $1 } END { i = int(NR * 0.99 + 0.5); if (i < 1) i = 1; printf "%.3f", v[i] / 1000 }')
    echo "$p99 $cpu $(h2_bad <<<"$out")"
}
# hold_rss url procs... -> RSS per proxy (KiB) with HOLD streams open, or "-" if they did not all
# reach the upstream's /slow listener within 10 s (then a note on stderr).
hold_rss() {
    local url=$1 hole h queued=0 rss=-
    shift
    start python3 -c 'import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
time.sleep(1e6)' "$HOLE"
    hole=$last
    for _ in $(seq 50); do ss -ltnH "sport = :$HOLE" | grep -q . && break; sleep 0.1; done
    start h2load -t1 -c"$HOLD_CONNS" -m$((HOLD / HOLD_CONNS)) -n"$HOLD" "${url}slow"
    h=$last
    for _ in $(seq 100); do
        # a listening socket's Recv-Q: the connections waiting in its accept queue
        queued=$(ss -ltnH "sport = :$HOLE" | awk '{ print $2 }')
        [ "${queued:-0}" -ge "$HOLD" ] && break
        sleep 0.1
    done
    if [ "${queued:-0}" -ge "$HOLD" ]; then
        rss=$(rss_kib "$@")
    else
        echo "bench: only ${queued:-0} of $HOLD streams reached the upstream through $url after 10 s" >&2
    fi
    kill "$h" "$hole" 2>/dev/null || true
    wait "$h" "$hole" 2>/dev/null || true
    echo "$rss"
}

# ROUNDS rounds with the contenders interleaved, so outside load hits them alike. Each round:
# streams/s at saturation (the best round is reported, with the spread), then the fixed-rate run
# for latency and CPU (the median round is reported).
declare -A BEST SPREAD P99S CPUS BAD
for _ in $(seq "$ROUNDS"); do
    for c in $CONTENDERS; do
        launch "$c"
        read -r -a procs <<<"${PROC[$c]}"
        url="http://127.0.0.1:${FRONT[$c]}/"
        read -r r bad1 <<<"$(saturate "$url")"
        BEST[$c]=$(awk -v a="${BEST[$c]:-0}" -v b="$r" 'BEGIN { print (b > a ? b : a) }')
        SPREAD[$c]="${SPREAD[$c]:-}${SPREAD[$c]:+ }$r"
        read -r p99 cpu bad2 <<<"$(rate_run "$url" "${procs[@]}")"
        P99S[$c]="${P99S[$c]:-}${P99S[$c]:+ }$p99"
        [ "$cpu" != - ] && CPUS[$c]="${CPUS[$c]:-}${CPUS[$c]:+ }$cpu"
        BAD[$c]="${BAD[$c]:-}${BAD[$c]:+ }$bad1/$bad2"
        stop "${procs[@]}"
    done
done

echo "Table: HTTP/2 through a sidecar pair (h2load -> proxy -> proxy -> upstream, h2c on every hop), $(nproc) CPUs"
line contender "streams/s" "p99_ms" "vCPU/kstreams/px" "rss_${HOLD}s"
declare -A RPS P99 CPU RHOLD
for c in $CONTENDERS; do
    launch "$c"
    read -r -a procs <<<"${PROC[$c]}"
    cpu="-" held="-"
    if [ ${#procs[@]} -gt 0 ]; then
        cpu=$(median "${CPUS[$c]}")
        held=$(hold_rss "http://127.0.0.1:${FRONT[$c]}/" "${procs[@]}")
    fi
    RPS[$c]=${BEST[$c]} P99[$c]=$(median "${P99S[$c]}") CPU[$c]=$cpu RHOLD[$c]=$held
    line "$c" "${RPS[$c]}" "${P99[$c]}" "$cpu" "$(mib "$held")"
    stop "${procs[@]}"
done
for c in $CONTENDERS; do
    echo "  $c, $ROUNDS rounds: streams/s ${SPREAD[$c]}; p99_ms ${P99S[$c]}${CPUS[$c]:+; vCPU/kstreams/px ${CPUS[$c]}};" \
        "failed streams (saturation/rate) ${BAD[$c]}"
done
echo "(streams/s: h2load -t1 -c$CONNS -m$STREAMS -D$DURATION, best round; p99 at $RATE streams/s over $RATE_CONNS"
echo " connections and CPU per 1000 streams during that run, per proxy: median round; rss_${HOLD}s: per proxy,"
echo " averaged over the pair, with $HOLD streams open over $HOLD_CONNS connections, waiting for the upstream)"

# --- issue 14's goal: ahead of the best peer pair on each figure ---
if [ -n "${RPS[trellis]:-}" ]; then
    best_rps=0 best_p99="" best_cpu="" best_rss=""
    for peer in haproxy nginx; do
        [ -n "${RPS[$peer]:-}" ] || continue
        best_rps=$(awk -v a="$best_rps" -v b="${RPS[$peer]}" 'BEGIN { print (b > a ? b : a) }')
        best_p99=$(awk -v a="${best_p99:-1e9}" -v b="${P99[$peer]}" 'BEGIN { print (b < a ? b : a) }')
        best_cpu=$(awk -v a="${best_cpu:-1e9}" -v b="${CPU[$peer]}" 'BEGIN { print (b < a ? b : a) }')
        [ "${RHOLD[$peer]}" != - ] && best_rss=$(awk -v a="${best_rss:-1e12}" -v b="${RHOLD[$peer]}" 'BEGIN { print (b < a ? b : a) }')
    done
    verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "NOT met") }'; }
    if [ "$best_rps" != 0 ]; then
        echo "Goal (issue 14), trellis vs the best peer pair (ahead of it on each):"
        r=$(awk -v t="${RPS[trellis]}" -v p="$best_rps" 'BEGIN { printf "%.2f", t / p }')
        echo "  throughput: ${r}x the faster peer: $(verdict "$(awk -v r="$r" 'BEGIN { print (r > 1) }')")"
        echo "  p99 at $RATE streams/s: ${P99[trellis]} ms vs best peer $best_p99 ms: $(verdict "$(awk -v t="${P99[trellis]}" -v p="$best_p99" 'BEGIN { print (t < p) }')")"
        echo "  CPU: ${CPU[trellis]} vCPU/kstreams/proxy vs best peer $best_cpu: $(verdict "$(awk -v t="${CPU[trellis]}" -v p="$best_cpu" 'BEGIN { print (t < p) }')")"
        if [ "${RHOLD[trellis]}" != - ] && [ -n "$best_rss" ]; then
            echo "  RSS with $HOLD streams open: $(mib "${RHOLD[trellis]}") vs best peer $(mib "$best_rss"): $(verdict "$(awk -v t="${RHOLD[trellis]}" -v p="$best_rss" 'BEGIN { print (t < p) }')")"
        else
            echo "  RSS with $HOLD streams open: not measured (the streams did not all reach the upstream): NOT met"
        fi
    fi
fi
smoke_note
