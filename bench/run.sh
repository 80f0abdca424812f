#!/usr/bin/env bash
# make bench: a Trellis proxy pair against HAProxy and nginx pairs, on one machine, in one run.
#
# Table 1, the sidecar-pair position on loopback: client -> proxy A -> proxy B -> upstream, every
# contender in front of the same upstream (nginx returning a 1 KiB body), each proxy one worker
# thread, keep-alive on both sides. Figures: requests/s at saturation (wrk, fixed connections);
# p50/p99 at a fixed 1000 rps (bench_rate: microsecond resolution, no coordinated omission);
# proxy CPU per 1000 rps (on-CPU time from /proc/PID/task/*/schedstat, proxies only, during the
# fixed-rate run); proxy RSS idle / after load / with 1000 idle keep-alive connections. Then the
# ratios against the best peer for each goal of issue 6.
#
# Table 2, the transparent path (root, iproute2, iptables; skipped otherwise): a client and a
# server network namespace joined by a veth pair; direct, through two Trellis gateways addressed
# explicitly, and through real sidecars (proxyinit's iptables REDIRECT rules, proxy as uid 1337)
# on both ends. The last two rows differ only by the redirection.
#
# The machine may be shared: req/s, latency and CPU are measured in ROUNDS rounds, the contenders
# interleaved, so a burst of outside load hits all of them alike; req/s shows the best round,
# latency and CPU the median round, each with the spread.
# Knobs (full / SMOKE=1): ROUNDS (3 / 1), WARMUP (2s / 1s), DURATION (10s / 1s), CONNS (50),
# RATE (1000), RATE_SECONDS (10 / 1), RATE_CONNS (10), CONTENDERS ("direct trellis haproxy nginx"),
# IDLE (1000 / 100), TRANSPARENT (1; 0 skips table 2).
#
# smoke-expect: ^Table 1: the sidecar-pair position
# smoke-expect: ^contender +req/s +p50_ms +p99_ms +vCPU/krps/px +rss_idle +rss_load +rss_[0-9]+c$
# smoke-expect: ^direct +{n} +{n} +{n} +- +- +- +-$
# smoke-expect: ^trellis +{n} +{n} +{n} +{n} +{n}M +{n}M +{n}M$
# smoke-expect: ^haproxy +{n} +{n} +{n} +{n} +{n}M +{n}M +{n}M$
# smoke-expect: ^nginx +{n} +{n} +{n} +{n} +{n}M +{n}M +{n}M$
# smoke-expect: ^  throughput: {n}x the faster peer
# smoke-expect: ^Table 2: the transparent path
# smoke-expect: ^path +req/s +p50_ms +p99_ms +vCPU/krps/px$
# smoke-expect: ^direct +{n} +{n} +{n} +-$
# smoke-expect: ^trellis gateways +{n} +{n} +{n} +{n}$
# smoke-expect: ^trellis sidecars +{n} +{n} +{n} +{n}$
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${ROUNDS:-$(knob 3 1)}
WARMUP=${WARMUP:-$(knob 2s 1s)}
DURATION=${DURATION:-$(knob 10s 1s)}
RATE_SECONDS=${RATE_SECONDS:-$(knob 10 1)}
IDLE=${IDLE:-$(knob 1000 100)}
CONNS=${CONNS:-50}
RATE=${RATE:-1000}
RATE_CONNS=${RATE_CONNS:-10}
CONTENDERS=${CONTENDERS:-"direct trellis haproxy nginx"}
TRANSPARENT=${TRANSPARENT:-1}
TARGET=${CARGO_TARGET_DIR:-target}
bench_install haproxy:haproxy nginx:nginx wrk:wrk hey:hey python3:python3
bench_build
PROXY=$TARGET/release/proxy
RATER=$TARGET/release/examples/bench_rate

work=$(mktemp -d)
chmod 755 "$work"
pids=()
NS_C=trellis-bench-client NS_S=trellis-bench-server
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

UP=18080

# Starts a process in the background; its pid is left in $last.
start() { "$@" >>"$work/procs.log" 2>&1 & last=$!; pids+=("$last"); }
wait_url() { # url [netns]
    local run=()
    [ -n "${2:-}" ] && run=(ip netns exec "$2")
    for _ in $(seq 100); do
        "${run[@]}" curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "bench: nothing answers on $1" >&2
    return 1
}

start nginx -c "$(nginx_conf "$work/upstream" 127.0.0.1:$UP "")"
wait_url "http://127.0.0.1:$UP/"

declare -A FRONT PROC
launch() { # contender -> sets FRONT[c] and PROC[c] ("pid pid")
    case $1 in
    direct) FRONT[direct]=$UP PROC[direct]="" ;;
    trellis)
        start "$PROXY" gateway --listen 127.0.0.1:18102 --upstream 127.0.0.1:$UP \
            --admin-listen 127.0.0.1:19902 --concurrency 1
        local b=$last
        start "$PROXY" gateway --listen 127.0.0.1:18101 --upstream 127.0.0.1:18102 \
            --admin-listen 127.0.0.1:19901 --concurrency 1
        FRONT[trellis]=18101 PROC[trellis]="$last $b" ;;
    haproxy)
        local dir="$work/haproxy" b
        mkdir -p "$dir"
        haproxy_cfg "$dir/a.cfg" 127.0.0.1:18201 127.0.0.1:18202
        haproxy_cfg "$dir/b.cfg" 127.0.0.1:18202 127.0.0.1:$UP
        start haproxy -db -f "$dir/b.cfg"
        b=$last
        start haproxy -db -f "$dir/a.cfg"
        FRONT[haproxy]=18201 PROC[haproxy]="$last $b" ;;
    nginx)
        local b
        start nginx -c "$(nginx_conf "$work/nginx-b" 127.0.0.1:18302 127.0.0.1:$UP)"
        b=$last
        start nginx -c "$(nginx_conf "$work/nginx-a" 127.0.0.1:18301 127.0.0.1:18302)"
        FRONT[nginx]=18301 PROC[nginx]="$last $b" ;;
    esac
    wait_url "http://127.0.0.1:${FRONT[$1]}/"
}

line1() { printf '%-9s %9s %8s %8s %13s %9s %9s %9s\n' "$@"; }
line2() { printf '%-22s %9s %8s %8s %13s\n' "$@"; }
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }
# rate_run url [netns] -> "rps=… p50_ms=… p99_ms=…" from bench_rate
rate_run() {
    local run=()
    [ -n "${2:-}" ] && run=(ip netns exec "$2")
    local addr=${1#http://}
    "${run[@]}" "$RATER" "${addr%%/*}" "$RATE" "$RATE_SECONDS" "$RATE_CONNS"
}
saturate() { # url [netns] -> req/s
    local run=()
    [ -n "${2:-}" ] && run=(ip netns exec "$2")
    "${run[@]}" wrk -t1 -c"$CONNS" -d"$WARMUP" "$1" >/dev/null
    "${run[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" "$1" | awk '/Requests\/sec/ {printf "%.0f", $2}'
}

stop() { local p; for p in "$@"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; }

median() { tr ' ' '\n' <<<"$1" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ROUNDS rounds with the contenders interleaved, so outside load hits them alike. Each round:
# req/s at saturation (the best round is reported, with the spread), then the fixed-rate run for
# latency and CPU (the median round is reported).
declare -A BEST SPREAD LOADRSS P50S P99S CPUS
for _ in $(seq "$ROUNDS"); do
    for c in $CONTENDERS; do
        launch "$c"
        read -r -a procs <<<"${PROC[$c]}"
        url="http://127.0.0.1:${FRONT[$c]}/"
        r=$(saturate "$url")
        BEST[$c]=$(awk -v a="${BEST[$c]:-0}" -v b="$r" 'BEGIN { print (b > a ? b : a) }')
        SPREAD[$c]="${SPREAD[$c]:-}${SPREAD[$c]:+ }$r"
        # RSS after the load: right after saturation, the largest over the rounds.
        [ ${#procs[@]} -gt 0 ] && LOADRSS[$c]=$(awk -v a="${LOADRSS[$c]:-0}" -v b="$(rss_kib "${procs[@]}")" 'BEGIN { print (b > a ? b : a) }')
        [ ${#procs[@]} -gt 0 ] && t0=$(cpu_ns "${procs[@]}")
        out=$(rate_run "$url")
        if [ ${#procs[@]} -gt 0 ]; then
            t1=$(cpu_ns "${procs[@]}")
            # per proxy, per 1000 rps actually served
            cpu=$(awk -v d=$((t1 - t0)) -v n=${#procs[@]} -v s="$RATE_SECONDS" -v r="$(field rps "$out")" \
                'BEGIN { printf "%.4f", (d / 1e9 / s / n) / (r / 1000) }')
            CPUS[$c]="${CPUS[$c]:-}${CPUS[$c]:+ }$cpu"
        fi
        P50S[$c]="${P50S[$c]:-}${P50S[$c]:+ }$(field p50_ms "$out")"
        P99S[$c]="${P99S[$c]:-}${P99S[$c]:+ }$(field p99_ms "$out")"
        stop "${procs[@]}"
    done
done

echo "Table 1: the sidecar-pair position on loopback (client -> proxy -> proxy -> upstream), $(nproc) CPUs"
line1 contender "req/s" "p50_ms" "p99_ms" "vCPU/krps/px" "rss_idle" "rss_load" "rss_${IDLE}c"
declare -A RPS P50 P99 CPU RIDLE RCONN
for c in $CONTENDERS; do
    launch "$c"
    read -r -a procs <<<"${PROC[$c]}"
    idle_rss="-" load_rss="-" idle_conn_rss="-" cpu="-"
    if [ ${#procs[@]} -gt 0 ]; then
        idle_rss=$(rss_kib "${procs[@]}")
        cpu=$(median "${CPUS[$c]}")
        load_rss=${LOADRSS[$c]}
        coproc IDLEC { python3 bench/idle_conns.py 127.0.0.1 "${FRONT[$c]}" "$IDLE"; }
        read -r ready _ <&"${IDLEC[0]}"
        # The front proxy holds the idle client connections: its own RSS, not the pair's mean.
        [ "$ready" = ready ] && idle_conn_rss=$(rss_kib "${procs[0]}")
        echo >&"${IDLEC[1]}"
        wait "$IDLEC_PID" 2>/dev/null || true
    fi
    RPS[$c]=${BEST[$c]} P50[$c]=$(median "${P50S[$c]}") P99[$c]=$(median "${P99S[$c]}") CPU[$c]=$cpu
    RIDLE[$c]=$idle_rss RCONN[$c]=$idle_conn_rss
    line1 "$c" "${RPS[$c]}" "${P50[$c]}" "${P99[$c]}" "$cpu" "$(mib "$idle_rss")" "$(mib "$load_rss")" "$(mib "$idle_conn_rss")"
    stop "${procs[@]}"
done
for c in $CONTENDERS; do
    echo "  $c, $ROUNDS rounds: req/s ${SPREAD[$c]}; p99_ms ${P99S[$c]}${CPUS[$c]:+; vCPU/krps/px ${CPUS[$c]}}"
done
echo "(CPU and RSS idle/load per proxy, averaged over the pair; rss_${IDLE}c: the front proxy, which holds them;"
echo " req/s: wrk -t1 -c$CONNS -d$DURATION, best round; p50/p99 at $RATE rps over $RATE_CONNS connections"
echo " and CPU during that run: median round)"

# --- the goals of issue 6, against the best peer ---
if [ -n "${RPS[trellis]:-}" ]; then
    best_rps=0 best_p99="" best_cpu=""
    for peer in haproxy nginx; do
        [ -n "${RPS[$peer]:-}" ] || continue
        best_rps=$(awk -v a="$best_rps" -v b="${RPS[$peer]}" 'BEGIN { print (b > a ? b : a) }')
        best_p99=$(awk -v a="${best_p99:-1e9}" -v b="${P99[$peer]}" 'BEGIN { print (b < a ? b : a) }')
        best_cpu=$(awk -v a="${best_cpu:-1e9}" -v b="${CPU[$peer]}" 'BEGIN { print (b < a ? b : a) }')
    done
    verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "NOT met") }'; }
    echo "Goals (issue 6), trellis vs the best peer pair:"
    if [ "$best_rps" != 0 ]; then
        r=$(awk -v t="${RPS[trellis]}" -v p="$best_rps" 'BEGIN { printf "%.2f", t / p }')
        echo "  throughput: ${r}x the faster peer (goal >= 1.2x): $(verdict "$(awk -v r="$r" 'BEGIN { print (r >= 1.2) }')")"
        echo "  p99 at $RATE rps: ${P99[trellis]} ms vs best peer $best_p99 ms (goal: no worse): $(verdict "$(awk -v t="${P99[trellis]}" -v p="$best_p99" 'BEGIN { print (t <= p) }')")"
        echo "  CPU: ${CPU[trellis]} vCPU/krps/proxy vs best peer $best_cpu (goal <= 0.015): $(verdict "$(awk -v t="${CPU[trellis]}" 'BEGIN { print (t <= 0.015) }')")"
    fi
    if [ -n "${P99[direct]:-}" ]; then
        added=$(awk -v t="${P99[trellis]}" -v d="${P99[direct]}" 'BEGIN { printf "%.3f", t - d }')
        echo "  p99 added over direct: $added ms (goal < 0.3 ms): $(verdict "$(awk -v a="$added" 'BEGIN { print (a < 0.3) }')")"
    fi
    echo "  RSS idle $(mib "${RIDLE[trellis]}") (goal <= 8M), with $IDLE connections $(mib "${RCONN[trellis]}") (goal <= 20M): $(verdict "$(awk -v i="${RIDLE[trellis]}" -v c="${RCONN[trellis]}" 'BEGIN { print (i <= 8192 && c <= 20480) }')")"
fi

# --- table 2: the transparent path through real sidecars ---
if [ "$TRANSPARENT" = 0 ]; then smoke_note; exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v iptables-restore >/dev/null; then
    echo "Table 2 skipped: the transparent path needs root, iproute2 and iptables."
    smoke_note
    exit 0
fi
C_IP=10.248.0.1 S_IP=10.248.0.2 APP=8080
# Namespaces a killed run left behind would make `ip netns add` fail.
ip netns del "$NS_C" 2>/dev/null || true
ip netns del "$NS_S" 2>/dev/null || true
ip netns add "$NS_C"
ip netns add "$NS_S"
ip link add tbench-c type veth peer name tbench-s
ip link set tbench-c netns "$NS_C"
ip link set tbench-s netns "$NS_S"
ip -n "$NS_C" addr add "$C_IP/24" dev tbench-c
ip -n "$NS_S" addr add "$S_IP/24" dev tbench-s
for ns in "$NS_C" "$NS_S"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_C" link set tbench-c up
ip -n "$NS_S" link set tbench-s up
start ip netns exec "$NS_S" nginx -c "$(nginx_conf "$work/app-netns" "$S_IP:$APP" "")"
wait_url "http://$S_IP:$APP/" "$NS_C"

echo
echo "Table 2: the transparent path (client netns -> veth -> server netns), same upstream and load"
line2 path "req/s" "p50_ms" "p99_ms" "vCPU/krps/px"
row() { # name url procs...
    local name=$1 url=$2 cpu=- t0 t1 out rps
    shift 2
    rps=$(saturate "$url" "$NS_C")
    [ $# -gt 0 ] && t0=$(cpu_ns "$@")
    out=$(rate_run "$url" "$NS_C")
    if [ $# -gt 0 ]; then
        t1=$(cpu_ns "$@")
        cpu=$(awk -v d=$((t1 - t0)) -v n=$# -v s="$RATE_SECONDS" -v r="$(field rps "$out")" \
            'BEGIN { printf "%.4f", (d / 1e9 / s / n) / (r / 1000) }')
    fi
    line2 "$name" "$rps" "$(field p50_ms "$out")" "$(field p99_ms "$out")" "$cpu"
}
row direct "http://$S_IP:$APP/"

# Two gateways addressed explicitly: the same two hops, no redirection.
start ip netns exec "$NS_S" "$PROXY" gateway --listen "$S_IP:18102" --upstream "$S_IP:$APP" \
    --admin-listen 127.0.0.1:19902 --concurrency 1
gb=$last
start ip netns exec "$NS_C" "$PROXY" gateway --listen 127.0.0.1:18101 --upstream "$S_IP:18102" \
    --admin-listen 127.0.0.1:19901 --concurrency 1
ga=$last
wait_url "http://127.0.0.1:18101/" "$NS_C"
row "trellis gateways" "http://127.0.0.1:18101/" "$ga" "$gb"
kill "$ga" "$gb"
wait "$ga" "$gb" 2>/dev/null || true

# Real sidecars: proxyinit's rules in both namespaces, the proxy as uid 1337 (as in a pod).
for ns in "$NS_C" "$NS_S"; do
    ip netns exec "$ns" "$TARGET/release/proxyinit" >>"$work/procs.log" 2>&1
    start ip netns exec "$ns" setpriv --reuid 1337 --regid 1337 --clear-groups \
        "$PROXY" --concurrency 1 --admin-listen 127.0.0.1:9901
    [ "$ns" = "$NS_C" ] && sc=$last || ss=$last
done
wait_url "http://127.0.0.1:9901/ready" "$NS_C"
wait_url "http://127.0.0.1:9901/ready" "$NS_S"
wait_url "http://$S_IP:$APP/" "$NS_C"
row "trellis sidecars" "http://$S_IP:$APP/" "$sc" "$ss"
echo "(sidecars: iptables REDIRECT to 15001 on the client side and 15006 on the server side;"
echo " the difference to the gateways row is what redirection and SO_ORIGINAL_DST cost)"
smoke_note
