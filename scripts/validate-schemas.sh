#!/usr/bin/env bash
# Checks every Kubernetes manifest we ship, and every pod the injector produces from the demo and
# test workloads, against the real Kubernetes OpenAPI schema (kubernetes-validate --strict).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
K8S_VERSION=${K8S_VERSION:-1.33.0}
validate() { "$PY" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$@"; }

mapfile -t manifests < <(find manifests tests/kind -name '*.yaml' ! -name 'kustomization.yaml' 2>/dev/null | sort)
if [ ${#manifests[@]} -gt 0 ]; then
    validate "${manifests[@]}"
    echo "schema: ${#manifests[@]} manifest files valid against Kubernetes $K8S_VERSION"
fi

# Injected output: every workload fixture and demo manifest, injected offline.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
n=0
for f in "${manifests[@]}" webhook/testdata/workloads/*.yaml; do
    [ -f "$f" ] || continue
    case "$f" in manifests/demo/*|webhook/testdata/workloads/*) ;; *) continue ;; esac
    n=$((n + 1))
    target/release/webhook inject -f "$f" > "$out/$n.yaml"
    validate "$out/$n.yaml"
done
echo "schema: $n injected workload files valid against Kubernetes $K8S_VERSION"
