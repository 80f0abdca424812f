#!/usr/bin/env bash
# Time-to-apply of proxyinit, run as the kubelet runs it: the whole binary inside a pod-like
# network namespace. "fresh" recreates the namespace before every run (a pod starting);
# "re-apply" runs again over existing rules (an init container restart). Needs root and hyperfine.
# Usage: proxyinit/scripts/bench-apply.sh [path/to/proxyinit]   (default: the release build)
set -euo pipefail

bin=${1:-${CARGO_TARGET_DIR:-target}/release/proxyinit}
ns="trellis-bench-$$"
[ "$(id -u)" = 0 ] || { echo "bench-apply: needs root (network namespaces, iptables)" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "bench-apply: needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
[ -x "$bin" ] || { echo "bench-apply: no binary at $bin (cargo build -p proxyinit --release)" >&2; exit 1; }

fresh=$(mktemp)
trap 'ip netns del "$ns" 2>/dev/null || true; rm -f "$fresh"' EXIT
cat >"$fresh" <<SH
#!/bin/sh
ip netns del $ns 2>/dev/null
ip netns add $ns && ip -n $ns link set lo up && ip -n $ns addr add fd00:99::2/64 dev lo nodad
SH
chmod +x "$fresh"
"$fresh"

echo "== fresh pod (IPv4 only, then IPv4+IPv6 auto-detected)"
hyperfine -N --warmup 3 --runs 50 --prepare "$fresh" \
    "ip netns exec $ns $bin --ipv6=off" "ip netns exec $ns $bin"
echo "== re-apply over existing rules (init container restart)"
hyperfine -N --warmup 3 --runs 50 "ip netns exec $ns $bin"
echo "== baseline: ip netns exec alone"
hyperfine -N --warmup 3 --runs 50 "ip netns exec $ns true"
