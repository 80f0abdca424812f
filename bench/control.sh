#!/usr/bin/env bash
# make bench-control: the control plane at the scale of a large cluster, and one proxy's memory
# with many known destinations. Figures, not verdicts: the goals are printed beside them.
#
# Part 1 (no root needed): the load driver (control/examples/bench_control.rs, `control` mode)
# fills the kit's API server double with SERVICES Services (ClusterIPs spread over 10.96.0.0/12,
# in NAMESPACES namespaces) and one EndpointSlice each (ENDPOINTS in all), starts the real release
# `control serve --kubeconfig`, and times: the first lists until /ready; a resubscribe storm
# (SUBSCRIPTIONS streams opened at once over CONNECTIONS new HTTP/2 connections, as when every proxy
# comes back to a restarted control plane), until every stream has its first answer; then, after
# those are closed, SUBSCRIPTIONS streams to SUBSCRIBED Services over CONNECTIONS connections opened
# at OPEN_RATE per second (each Service's streams on different connections, like proxies), each
# until its first whole answer; CHANGES EndpointSlice changes at RATE per second (one endpoint
# replaced by a fresh address, written to the double, so it travels the real watch path), each
# until every stream of its Service shows the new address; then BURST changes written at once,
# until every stream shows its Service's last one. control's RSS (VmRSS, VmHWM) and CPU
# (utime+stime) come from /proc. The driver (streams and API double) shares the machine with
# control, so its own scheduling is part of the latencies.
#
# Part 2 (root, iproute2, iptables; skipped otherwise, PROXY=0 skips it too): a network namespace
# plays a pod: loopback up, an interface (one end of a veth pair kept inside) with an address and
# the default route (so ClusterIPs route and can be captured), an unreachable route for the pod
# range 10.240.0.0/12 (the proxy's connects to endpoints fail at once: 503), and proxyinit's own
# rules (outbound TCP to 15001; the proxy's uid 1337 and loopback exempt). Inside it the driver
# (`proxy` mode) runs the API double and control on 127.0.0.1 (loopback is never captured, so the
# proxy reaches control directly: the simplest honest wiring, no veth to the host needed), the
# proxy as uid 1337 (setpriv), and connects as root to DESTINATIONS distinct ClusterIPs, one GET
# each, so the proxy learns each destination as in a pod. Its RSS is read before (0 destinations)
# and after, once /clusters shows a Service cluster with all its hosts for every destination.
#
# Knobs (full / SMOKE=1): SERVICES (10000 / 100), ENDPOINTS (100000 / 1000), NAMESPACES (100 /
# 10), SUBSCRIPTIONS (5000 / 50), CONNECTIONS (100 / 5), SUBSCRIBED (1000 / 10), CHANGES (200 /
# 10), RATE (20), OPEN_RATE (1000), BURST (1000 / 20), DESTINATIONS (1000 / 20), PROXY (1).
#
# smoke-expect: ^control plane at scale \({n} Services in {n} namespaces, {n} endpoints, {n} subscriptions
# smoke-expect: ^  ready after initial list +{n} s$
# smoke-expect: ^  first answer +p50 {n} ms +p99 {n} ms +max {n} ms
# smoke-expect: ^  resubscribe storm +all {n} answered after {n} s
# smoke-expect: ^  endpoint change to every stream p50 {n} ms +p99 {n} ms +max {n} ms
# smoke-expect: ^  burst of {n} changes +all streams caught up after {n} s
# smoke-expect: ^  control RSS +peak {n} MiB, now {n} MiB
# smoke-expect: ^  control CPU +{n} s
# smoke-expect: ^  proxy RSS, {n} destinations x {n} endpoints +{n} MiB \(0 destinations: {n} MiB
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
SERVICES=${SERVICES:-$(knob 10000 100)}
ENDPOINTS=${ENDPOINTS:-$(knob 100000 1000)}
NAMESPACES=${NAMESPACES:-$(knob 100 10)}
SUBSCRIPTIONS=${SUBSCRIPTIONS:-$(knob 5000 50)}
CONNECTIONS=${CONNECTIONS:-$(knob 100 5)}
SUBSCRIBED=${SUBSCRIBED:-$(knob 1000 10)}
CHANGES=${CHANGES:-$(knob 200 10)}
RATE=${RATE:-20}
OPEN_RATE=${OPEN_RATE:-1000}
BURST=${BURST:-$(knob 1000 20)}
DESTINATIONS=${DESTINATIONS:-$(knob 1000 20)}
PROXY=${PROXY:-1}
TARGET=${CARGO_TARGET_DIR:-target}
bench_build
driver=$TARGET/release/examples/bench_control
NS=trellis-bench-control
work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
    # The driver's children (control, proxy) die with it; after a kill -9 these reach them.
    if [ -f "$work/pids" ]; then xargs -r kill 2>/dev/null <"$work/pids" || true; fi
    if ip netns list 2>/dev/null | grep -qx "$NS.*"; then
        ip netns pids "$NS" | xargs -r kill 2>/dev/null || true
        ip netns del "$NS" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$driver" control --control "$TARGET/release/control" --work "$work" \
    --services "$SERVICES" --endpoints "$ENDPOINTS" --namespaces "$NAMESPACES" \
    --subscriptions "$SUBSCRIPTIONS" --connections "$CONNECTIONS" \
    --subscribed-services "$SUBSCRIBED" --changes "$CHANGES" --rate "$RATE" --open-rate "$OPEN_RATE" --burst "$BURST"

if [ "$PROXY" = 0 ]; then smoke_note; exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v iptables-restore >/dev/null; then
    echo "  proxy RSS: skipped (needs root, iproute2 and iptables for the pod's namespace)"
    smoke_note
    exit 0
fi
# A namespace a killed run left behind would make `ip netns add` fail.
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
# A veth pair with both ends inside: the pod's eth0 and a peer nothing listens on.
ip -n "$NS" link add pod0 type veth peer name pod1
ip -n "$NS" addr add 10.1.0.2/24 dev pod0
ip -n "$NS" link set pod0 up
ip -n "$NS" link set pod1 up
ip -n "$NS" route add default via 10.1.0.1 dev pod0
ip -n "$NS" route add unreachable 10.240.0.0/12
ip netns exec "$NS" "$TARGET/release/proxyinit" >"$work/proxyinit.log" 2>&1 || {
    cat "$work/proxyinit.log"
    exit 1
}
ip netns exec "$NS" "$driver" proxy --control "$TARGET/release/control" \
    --proxy "$TARGET/release/proxy" --work "$work" --destinations "$DESTINATIONS"
smoke_note
