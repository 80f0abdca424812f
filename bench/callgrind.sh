#!/usr/bin/env bash
# make bench-instructions: instructions per proxied request, counted by callgrind, which (unlike
# time) does not drift with machine load; for the Trellis proxy and, as peers in the same run,
# nginx and HAProxy in the same position. Each is one process, one worker thread, in front of the
# in-repo bench_upstream, keep-alive on both sides; hey sends N1, then (to a fresh process) N2
# requests over 10 connections, and (Ir(N2) - Ir(N1)) / (N2 - N1) removes start-up and shutdown.
# This counts user-space instructions only: the kernel's share (most of a proxy's CPU on
# loopback) is what `make bench` measures. Knobs (full / SMOKE=1): N1 (2000 / 100), N2 (12000 / 300).
# `trellis-svc` is the same proxy sending to a Service the control plane knows (`control serve
# --from-dir`, three endpoints on 127.0.0.1-3, balanced per request), the path a meshed client's
# request to a ClusterIP takes. `trellis-routes` sends to a Service with an HTTPRoute of ten rules
# (prefixes, an exact path, a regex, headers, a query parameter, a method), the request matching
# only the last (the catch-all), so that every match is tried: the per-request cost of routes.
# The `-h2` rows are the same positions for HTTP/2 (h2c on both sides): h2load sends the streams,
# ten at a time over one connection, to Trellis, to nginx (`listen ... http2` and `grpc_pass`, its
# only HTTP/2 upstream) and to HAProxy (`proto h2` both sides), in front of an HTTP/2 nginx that
# answers a 1 KiB body: the instructions per proxied stream.
#
# smoke-expect: ^user-space instructions per proxied request
# smoke-expect: ^  trellis +{n}  \(trellis = {n}x this\)$
# smoke-expect: ^  trellis-svc +{n}  \(trellis = {n}x this\)$
# smoke-expect: ^  trellis-routes +{n}  \(trellis = {n}x this\)$
# smoke-expect: ^  nginx +{n}  \(trellis = {n}x this\)$
# smoke-expect: ^  haproxy +{n}  \(trellis = {n}x this\)$
# smoke-expect: ^user-space instructions per proxied HTTP/2 stream
# smoke-expect: ^  trellis-h2 +{n}  \(trellis-h2 = {n}x this\)$
# smoke-expect: ^  nginx-h2 +{n}  \(trellis-h2 = {n}x this\)$
# smoke-expect: ^  haproxy-h2 +{n}  \(trellis-h2 = {n}x this\)$
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
N1=${N1:-$(knob 2000 100)}
N2=${N2:-$(knob 12000 300)}
TARGET=${CARGO_TARGET_DIR:-target}
bench_install valgrind:valgrind hey:hey curl:curl nginx:nginx haproxy:haproxy h2load:nghttp2-client
bench_build
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

UP=127.0.0.1:18090 LISTEN=127.0.0.1:18091 CONTROL=127.0.0.1:19912 UP_H2=127.0.0.1:18092
# On every loopback address, so that the Service's three endpoints are three hosts.
"$TARGET/release/examples/bench_upstream" 0.0.0.0:18090 >/dev/null 2>&1 &
pids+=($!)
# The HTTP/2 rows' upstream, outside callgrind.
nginx -c "$(h2_nginx_conf "$work/nginx-up-h2" "$UP_H2" "")" >/dev/null 2>&1 &
pids+=($!)

# The control plane, told of one Service (ClusterIP 127.0.0.100:80) with three ready endpoints.
mkdir -p "$work/cluster"
cat >"$work/cluster/bench.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: upstream, namespace: bench}
spec:
  clusterIP: 127.0.0.100
  ports: [{name: http, port: 80, targetPort: 18090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: upstream-1
  namespace: bench
  labels: {kubernetes.io/service-name: upstream}
addressType: IPv4
ports: [{name: http, port: 18090}]
endpoints:
  - addresses: [127.0.0.1]
  - addresses: [127.0.0.2]
  - addresses: [127.0.0.3]
---
apiVersion: v1
kind: Service
metadata: {name: routed, namespace: bench}
spec:
  clusterIP: 127.0.0.101
  ports: [{name: http, port: 80, targetPort: 18090}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ten-rules, namespace: bench}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api/v1/users}}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /api/v1/orders}}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{path: {type: Exact, value: /healthz}}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{headers: [{name: end-user, value: jason}]}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{headers: [{name: x-canary, value: "true"}]}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{queryParams: [{name: version, value: v2}]}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{method: POST}]
      backendRefs: [{name: upstream, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /static}}]
      backendRefs: [{name: upstream, port: 80}]
    - backendRefs: [{name: upstream, port: 80}]
YAML
"$TARGET/release/control" serve --from-dir "$work/cluster" --listen "$CONTROL" \
    --metrics-listen 127.0.0.1:19914 >"$work/control.log" 2>&1 &
pids+=($!)

# No master process: callgrind follows the one process that serves.
NGINX_CONF=$(nginx_conf "$work/nginx" "$LISTEN" "$UP" "master_process off;")
haproxy_cfg "$work/haproxy.cfg" "$LISTEN" "$UP"
NGINX_H2_CONF=$(h2_nginx_conf "$work/nginx-h2" "$LISTEN" "$UP_H2" "" "master_process off;")
haproxy_cfg "$work/haproxy-h2.cfg" "$LISTEN proto h2" "$UP_H2 proto h2"

command_of() { # contender -> the command line to run under callgrind
    case $1 in
    trellis) echo "$TARGET/release/proxy gateway --listen $LISTEN --upstream $UP --admin-listen 127.0.0.1:19991 --concurrency 1" ;;
    trellis-svc) echo "$TARGET/release/proxy gateway --listen $LISTEN --upstream 127.0.0.100:80 --control-plane $CONTROL --admin-listen 127.0.0.1:19991 --concurrency 1" ;;
    trellis-routes) echo "$TARGET/release/proxy gateway --listen $LISTEN --upstream 127.0.0.101:80 --control-plane $CONTROL --admin-listen 127.0.0.1:19991 --concurrency 1" ;;
    nginx) echo "nginx -c $NGINX_CONF" ;;
    haproxy) echo "haproxy -db -f $work/haproxy.cfg" ;;
    trellis-h2) echo "$TARGET/release/proxy gateway --listen $LISTEN --upstream $UP_H2 --admin-listen 127.0.0.1:19991 --concurrency 1" ;;
    nginx-h2) echo "nginx -c $NGINX_H2_CONF" ;;
    haproxy-h2) echo "haproxy -db -f $work/haproxy-h2.cfg" ;;
    esac
}

count() { # contender requests -> total instructions of the process serving them
    local cmd
    read -r -a cmd <<<"$(command_of "$1")"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "${cmd[@]}" \
        >/dev/null 2>"$work/valgrind.log" &
    local vp=$!
    local h2=()
    [[ $1 == *-h2 ]] && h2=(--http2-prior-knowledge)
    for _ in $(seq 1 150); do
        curl -fso /dev/null "${h2[@]}" "http://$LISTEN/" && break
        sleep 0.2
    done
    if [ ${#h2[@]} -gt 0 ]; then
        h2load -t1 -c1 -m10 -n "$2" "http://$LISTEN/" > "$work/load.txt"
        grep -q "requests: $2 total, $2 started, $2 done, $2 succeeded" "$work/load.txt" \
            || { cat "$work/load.txt" >&2; exit 1; }
    else
        hey -n "$2" -c 10 "http://$LISTEN/" > "$work/load.txt"
        grep -q "\[200\].*$2 responses" "$work/load.txt" || { cat "$work/load.txt" >&2; exit 1; }
    fi
    kill -TERM "$vp"
    wait "$vp" || true
    local ir
    ir=$(cat "$work"/cg.* | awk '/^summary:/ { s += $2 } END { printf "%.0f", s }')
    rm -f "$work"/cg.*
    echo "$ir"
}

declare -A PER
HTTP1=(trellis trellis-svc trellis-routes nginx haproxy) HTTP2=(trellis-h2 nginx-h2 haproxy-h2)
for c in "${HTTP1[@]}" "${HTTP2[@]}"; do
    a=$(count "$c" "$N1")
    b=$(count "$c" "$N2")
    PER[$c]=$(( (b - a) / (N2 - N1) ))
done
rows() { # reference contender... -> one line each, with the reference's ratio to it
    local ref=$1 c
    for c in "$@"; do
        printf '  %-14s %7s  %s\n' "$c" "${PER[$c]}" \
            "$(awk -v r="$ref" -v t="${PER[$ref]}" -v p="${PER[$c]}" 'BEGIN { if (p > 0) printf "(%s = %.2fx this)", r, t / p }')"
    done
}
echo "user-space instructions per proxied request (callgrind, one worker, keep-alive; $N1 vs $N2 requests):"
rows "${HTTP1[@]}"
echo "user-space instructions per proxied HTTP/2 stream (callgrind, one worker, h2load -c1 -m10; $N1 vs $N2 streams):"
rows "${HTTP2[@]}"
smoke_note
