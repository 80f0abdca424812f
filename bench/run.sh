#!/usr/bin/env bash
# make bench: a Trellis proxy pair against HAProxy and nginx pairs, on one machine, in one run.
#
# Every contender sits in the sidecar-pair position in front of the same upstream (nginx returning a
# 1 KiB body): client -> proxy A -> proxy B -> upstream, on loopback, each proxy one worker thread,
# keep-alive on both sides. Figures: requests/s at saturation (wrk), p50/p99 at a fixed 1000 rps (hey),
# proxy CPU per 1000 rps (from /proc, proxies only), proxy RSS idle / after load / with 1000 idle
# keep-alive connections. Knobs: DURATION (10s), CONNS (50), RATE_SECONDS (10), CONTENDERS.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
RATE_SECONDS=${RATE_SECONDS:-10}
CONTENDERS=${CONTENDERS:-"direct trellis haproxy nginx"}
IDLE=${IDLE:-1000}

missing=()
for c in haproxy:haproxy nginx:nginx wrk:wrk hey:hey python3:python3; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
case " $CONTENDERS " in *" trellis "*) cargo build -q --release -p proxy ;; esac

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

UP=18080
body=$(head -c 1024 /dev/zero | tr '\0' 'x')

# --- the upstream: nginx, 1 KiB body, shared by every contender ---
nginx_conf() { # name listen upstream|"" (upstream empty = serve the body)
    local listen=$2 up=$3 dir="$work/$1"
    mkdir -p "$dir"
    {
        echo "worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/error.log warn;"
        echo "events { worker_connections 4096; }"
        echo "http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;"
        echo "  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;"
        if [ -z "$up" ]; then
            echo "  server { listen 127.0.0.1:$listen; location / { default_type text/plain; return 200 '$body'; } } }"
        else
            echo "  upstream u { server $up; keepalive 256; }"
            echo "  server { listen 127.0.0.1:$listen; location / { proxy_pass http://u; proxy_http_version 1.1;"
            echo "    proxy_set_header Connection \"\"; proxy_buffering off; } } }"
        fi
    } > "$dir/nginx.conf"
    echo "$dir/nginx.conf"
}
# Starts a process in the background; its pid is left in $last.
start() { "$@" >>"$work/procs.log" 2>&1 & last=$!; pids+=("$last"); }
wait_port() {
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "bench: nothing answers on :$1" >&2
    return 1
}

start nginx -c "$(nginx_conf upstream $UP "")"
wait_port $UP

declare -A FRONT PROC
launch() { # contender -> sets FRONT[c] and PROC[c] ("pid pid")
    case $1 in
    direct) FRONT[direct]=$UP PROC[direct]="" ;;
    trellis)
        start target/release/proxy gateway --listen 127.0.0.1:18102 --upstream 127.0.0.1:$UP \
            --admin-listen 127.0.0.1:19902 --concurrency 1
        local b=$last
        start target/release/proxy gateway --listen 127.0.0.1:18101 --upstream 127.0.0.1:18102 \
            --admin-listen 127.0.0.1:19901 --concurrency 1
        FRONT[trellis]=18101 PROC[trellis]="$last $b" ;;
    haproxy)
        local dir="$work/haproxy" b
        mkdir -p "$dir"
        for spec in a:18201:18202 b:18202:$UP; do
            IFS=: read -r hname hlisten hup <<<"$spec"
            cat > "$dir/$hname.cfg" <<CFG
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend f
    bind 127.0.0.1:$hlisten
    default_backend b
backend b
    server s 127.0.0.1:$hup
CFG
        done
        start haproxy -db -f "$dir/b.cfg"
        b=$last
        start haproxy -db -f "$dir/a.cfg"
        FRONT[haproxy]=18201 PROC[haproxy]="$last $b" ;;
    nginx)
        local b
        start nginx -c "$(nginx_conf nginx-b 18302 127.0.0.1:$UP)"
        b=$last
        start nginx -c "$(nginx_conf nginx-a 18301 127.0.0.1:18302)"
        FRONT[nginx]=18301 PROC[nginx]="$last $b" ;;
    esac
    wait_port "${FRONT[$1]}"
}

# nginx forks its worker: measure the worker, which does the work.
worker_of() { local kids; kids=$(pgrep -P "$1" 2>/dev/null | head -1); echo "${kids:-$1}"; }
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$(worker_of "$p")/status"))); done; echo $((t / $#)); }
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$(worker_of "$p")/stat"))); done; echo "$t"; }

printf '%-8s %11s %9s %9s %12s %9s %9s %9s\n' contender "req/s" "p50_ms" "p99_ms" "vCPU/krps/px" "rss_idle" "rss_load" "rss_${IDLE}c"
declare -A RPS P99
for c in $CONTENDERS; do
    launch "$c"
    url="http://127.0.0.1:${FRONT[$c]}/"
    read -r -a procs <<<"${PROC[$c]}"
    idle_rss="-" load_rss="-" idle_conn_rss="-" cpu="-"
    [ ${#procs[@]} -gt 0 ] && idle_rss=$(rss_kib "${procs[@]}")
    wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null # warm-up
    rps=$(wrk -t1 -c"$CONNS" -d"$DURATION" "$url" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    [ ${#procs[@]} -gt 0 ] && t0=$(cpu_ticks "${procs[@]}")
    hey -z "${RATE_SECONDS}s" -c 10 -q 100 "$url" > "$work/hey.txt"
    if [ ${#procs[@]} -gt 0 ]; then
        t1=$(cpu_ticks "${procs[@]}")
        done_rps=$(awk '/Requests\/sec/ {print $2}' "$work/hey.txt")
        # ticks are 1/100 s; per proxy, per 1000 rps actually served
        cpu=$(awk -v d=$((t1 - t0)) -v n=${#procs[@]} -v s="$RATE_SECONDS" -v r="$done_rps" \
            'BEGIN { printf "%.4f", (d / 100 / s / n) / (r / 1000) }')
        load_rss=$(rss_kib "${procs[@]}")
    fi
    p50=$(awk '/ 50% in/ {printf "%.3f", $3 * 1000}' "$work/hey.txt")
    p99=$(awk '/ 99% in/ {printf "%.3f", $3 * 1000}' "$work/hey.txt")
    if [ ${#procs[@]} -gt 0 ]; then
        coproc IDLEC { python3 bench/idle_conns.py 127.0.0.1 "${FRONT[$c]}" "$IDLE"; }
        read -r ready _ <&"${IDLEC[0]}"
        [ "$ready" = ready ] && idle_conn_rss=$(rss_kib "${procs[@]}")
        echo >&"${IDLEC[1]}"
        wait "$IDLEC_PID" 2>/dev/null || true
    fi
    RPS[$c]=$rps P99[$c]=$p99
    printf '%-8s %11s %9s %9s %12s %9s %9s %9s\n' "$c" "$rps" "$p50" "$p99" "$cpu" \
        "$([ "$idle_rss" = - ] && echo - || echo "$((idle_rss / 1024))M")" \
        "$([ "$load_rss" = - ] && echo - || echo "$((load_rss / 1024))M")" \
        "$([ "$idle_conn_rss" = - ] && echo - || echo "$((idle_conn_rss / 1024))M")"
    for p in "${procs[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
done
echo "(RSS and CPU are per proxy, averaged over the pair; p50/p99 at ~1000 rps from hey -c 10 -q 100)"
if [ -n "${RPS[trellis]:-}" ]; then
    for peer in haproxy nginx; do
        [ -n "${RPS[$peer]:-}" ] && awk -v t="${RPS[trellis]}" -v p="${RPS[$peer]}" -v n="$peer" \
            'BEGIN { printf "throughput trellis/%s: %.2fx\n", n, t / p }'
    done
    [ -n "${P99[direct]:-}" ] && awk -v t="${P99[trellis]}" -v d="${P99[direct]}" \
        'BEGIN { printf "p99 added by the trellis pair over direct: %.3f ms\n", t - d }'
fi
