#!/usr/bin/env bash
# Installs (with apt) what the tests and the demo need when it is missing: iptables (legacy + nft),
# iproute2, curl, hey, wrk, h2load, shellcheck, openssl, python3-venv. A no-op when all are present.
set -euo pipefail
need=()
for pkg_cmd in iptables:iptables-legacy iproute2:ip curl:curl hey:hey wrk:wrk nghttp2-client:h2load shellcheck:shellcheck openssl:openssl; do
    command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || need+=("${pkg_cmd%%:*}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${need[*]}"
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
