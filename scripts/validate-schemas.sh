#!/usr/bin/env bash
# Checks every Kubernetes manifest we ship, and every pod the injector produces from the demo and
# test workloads, against the real Kubernetes OpenAPI schema (kubernetes-validate --strict).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
K8S_VERSION=${K8S_VERSION:-1.33.0}
validate() { "$PY" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$@"; }

mapfile -t manifests < <(find manifests tests/kind -name '*.yaml' ! -name 'kustomization.yaml' ! -name 'kustomizeconfig.yaml' ! -name '*.gateway-api.yaml' 2>/dev/null | sort)
if [ ${#manifests[@]} -gt 0 ]; then
    validate "${manifests[@]}"
    echo "schema: ${#manifests[@]} manifest files valid against Kubernetes $K8S_VERSION"
fi

# What `kubectl apply -k` sends: manifests/, manifests/demo/ and the own-registry example overlays,
# rendered by kustomize (scripts/install-deps.sh installs kubectl).
rendered=$(mktemp -d)
k=0
for dir in manifests manifests/demo examples/own-registry examples/own-registry/demo; do
    k=$((k + 1))
    kubectl kustomize "$dir" >"$rendered/$k.yaml"
    validate "$rendered/$k.yaml"
done
rm -rf "$rendered"
echo "schema: $k kustomize builds (manifests/, manifests/demo/, examples/own-registry/) valid against Kubernetes $K8S_VERSION"

# TrafficPolicy and HTTPFault examples (custom kinds kubernetes-validate cannot check) against
# their CRDs' own schemas, with jsonschema (installed with kubernetes-validate, which requires it).
rc=0
"$PY" scripts/validate-crd-examples.py || rc=$?
case $rc in
    0) ;;
    3) echo "schema: SKIPPED the TrafficPolicy and HTTPFault examples under control/testdata: python package jsonschema is not installed" ;;
    *) exit "$rc" ;;
esac

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

# Injected pods from every golden AdmissionReview that carries a pod CREATE.
m=0
for review in webhook/testdata/reviews/*.json; do
    case "$review" in *.out.json) continue ;; esac
    "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["request"]; sys.exit(0 if r["kind"]["kind"]=="Pod" and r["operation"]=="CREATE" else 1)' "$review" || continue
    "$PY" -c 'import json,sys; o=json.load(open(sys.argv[1]))["request"]["object"]; o.pop("status",None); json.dump(o,sys.stdout)' "$review" > "$out/pod.json"
    # Refused pods (bad annotations) are expected to fail injection; everything else must validate.
    if target/release/webhook inject -f "$out/pod.json" > "$out/pod-$m.yaml" 2>"$out/err"; then
        validate "$out/pod-$m.yaml"
        m=$((m + 1))
    elif ! grep -q "trellis.dev/" "$out/err"; then
        cat "$out/err" >&2
        exit 1
    fi
done
echo "schema: $m injected pods from the AdmissionReview fixtures valid against Kubernetes $K8S_VERSION"
