#!/usr/bin/env bash
# Dry run of tests/kind/run.sh with stub docker, kind, kubectl and sleep on PATH: each stub records
# its argv and answers what run.sh reads, so the script's control flow and the commands it sends to
# a cluster are checked without Docker. `kubectl kustomize` and `kubectl apply -k` are rendered by the
# real kubectl (needed on PATH), and what `apply -k` received is kept and checked. Four runs:
#   1. a healthy cluster: run.sh must pass; its commands are asserted (the load that holds green's
#      pool passes -allow-initial-errors; only our image is `kind load`ed; fortio is never pulled or
#      loaded, the nodes pull it; the node image is pinned; IMAGE= reaches the Deployments and the
#      images the webhook injects, and nothing applied names the default image);
#   2. the holding load exits early (as fortio does without -allow-initial-errors): run.sh must fail
#      and say the load stopped before the sample;
#   3. IMAGE with a registry port and a digest: the overlay pins it by digest;
#   4. a webhook that injects the default image whatever IMAGE is: run.sh must fail;
#   5-7. issue 16 items 4 and 7 (run 1 checks their commands): a pod refused during the forced CA
#      rotation, a rotation that never completes, a pod admitted in a namespace enforcing Pod
#      Security baseline: run.sh must fail, saying which.
# Run by `cargo test -p sandbox --test kind_dry_run` (so by `make test`) and by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stubs=$work/bin
mkdir -p "$stubs"
real_sleep=$(command -v sleep)
# The kubectl stub renders `kustomize` and `apply -k` with the real kubectl's kustomize, so that the
# overlays run.sh writes for IMAGE= are built exactly as a cluster would receive them.
real_kubectl=$(command -v kubectl || true)
if [ -z "$real_kubectl" ] || ! "$real_kubectl" kustomize --help >/dev/null 2>&1; then
    echo "tests/kind dry run: needs kubectl with kustomize on PATH (scripts/install-deps.sh installs it)" >&2
    exit 1
fi

# Every stub appends "<tool> <argv...>" (one line, %q-quoted) to $STUB_LOG.
for tool in docker kind; do
    cat >"$stubs/$tool" <<EOF
#!/usr/bin/env bash
printf '%s' "$tool" >>"\$STUB_LOG"; printf ' %q' "\$@" >>"\$STUB_LOG"; echo >>"\$STUB_LOG"
EOF
done
cat >>"$stubs/kind" <<'EOF'
state=$STUB_STATE/cluster
case "$1 $2" in
"get clusters") if [ -e "$state" ]; then cat "$state"; fi ;;
"create cluster") echo "$4" >"$state" ;;
"delete cluster") rm -f "$state" ;;
esac
EOF
# sleep: short, but long enough for a stub that exits at once (STUB_HOLD=abort) to have exited and
# been reaped by run.sh's shell before the sleep that follows its start returns.
cat >"$stubs/sleep" <<EOF
#!/usr/bin/env bash
exec $real_sleep 0.3
EOF
cat >"$stubs/kubectl" <<EOF
#!/usr/bin/env bash
real_sleep=$real_sleep
real_kubectl=$real_kubectl
EOF
cat >>"$stubs/kubectl" <<'EOF'
printf 'kubectl' >>"$STUB_LOG"; printf ' %q' "$@" >>"$STUB_LOG"; echo >>"$STUB_LOG"
args=" $* "
# The value of env var $1 in what `apply -k` received for the install (the webhook's Deployment).
env_value() {
    grep -A1 -F "name: $1" "$STUB_STATE/applied-install.yaml" 2>/dev/null | sed -n 's/^ *value: //p' | head -1
}
# Item 7: the Secret's rotation, one step per read once annotated (rotation = reads since then).
rotation_file=$STUB_STATE/rotation
rotation() { if [ -e "$rotation_file" ]; then cat "$rotation_file"; else echo -1; fi; }
one_ca() { printf -- '-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n' "$1" | base64 | tr -d '\n'; }
case "$args" in
" kustomize "*) exec "$real_kubectl" "$@" ;;
# Item 4: namespace trellis-psa enforces baseline until relabelled privileged.
*" label namespace trellis-psa pod-security.kubernetes.io/enforce=privileged "*) touch "$STUB_STATE/psa-privileged" ;;
*" label namespace trellis-psa pod-security.kubernetes.io/enforce=restricted "*) touch "$STUB_STATE/psa-restricted" ;;
*" -n trellis-psa run psa-bare "*)
    if [ "${STUB_PSA:-refuse}" = admit ]; then
        echo 'pod/psa-bare created'
        exit 0
    fi
    level=baseline
    if [ -e "$STUB_STATE/psa-restricted" ]; then level=restricted; fi
    echo 'Error from server (Forbidden): admission webhook "sidecar-injector.trellis.dev" denied the request: trellis: pod refused: namespace "trellis-psa" enforces Pod Security level "'"$level"'" (label pod-security.kubernetes.io/enforce='"$level"'), which forbids the capabilities NET_ADMIN and NET_RAW that the injected init container proxyinit needs (as root) to redirect the pod'"'"'s traffic; Pod Security admission runs after this webhook and would reject the injected pod. To mesh this namespace: kubectl label namespace trellis-psa pod-security.kubernetes.io/enforce=privileged --overwrite.' >&2
    exit 1
    ;;
*" -n trellis-psa get events "*"reason=FailedCreate"*)
    echo 'ReplicaSet Error creating: admission webhook "sidecar-injector.trellis.dev" denied the request: trellis: pod refused: namespace "trellis-psa" enforces Pod Security level "baseline" (label pod-security.kubernetes.io/enforce=baseline), which forbids [...] To mesh this namespace: kubectl label namespace trellis-psa pod-security.kubernetes.io/enforce=privileged --overwrite.'
    ;;
*" -n trellis-psa get pods "*"jsonpath"*)
    if [ -e "$STUB_STATE/psa-privileged" ]; then echo 'psa-app-7d9f-x2k4q|proxyinit|true true'; fi
    ;;
*" auth can-i watch namespaces "*) echo yes ;;
*" auth can-i "*)
    echo no
    exit 1
    ;;
*" annotate secret trellis-webhook-tls trellis.dev/rotate=now "*) echo 0 >"$rotation_file" ;;
*" get secret trellis-webhook-tls "*)
    n=$(rotation)
    if [ "$n" -ge 0 ] && [ "${STUB_ROTATION:-complete}" != stuck ]; then
        n=$((n + 1))
        echo "$n" >"$rotation_file"
    fi
    case "$n" in
    -1 | 0) printf 'stable|1|' ;;
    1) printf 'trusting-next|2|' ;;
    2) printf 'serving-next|2|' ;;
    *) printf 'stable|3|' ;;
    esac
    ;;
*" get mutatingwebhookconfiguration "*"ca-bundle-serial"*)
    if [ "$(rotation)" -ge 3 ]; then printf '3|%s' "$(one_ca new)"; else printf '1|%s' "$(one_ca old)"; fi
    ;;
*" run rotation-"*" --dry-run=server "*)
    if [ "${STUB_ROTATION:-complete}" = refuse ] && [ "$(rotation)" -ge 1 ]; then
        echo 'Error from server (InternalError): Internal error occurred: failed calling webhook "sidecar-injector.trellis.dev": tls: failed to verify certificate: x509: certificate signed by unknown authority' >&2
        exit 1
    fi
    printf 'proxyinit'
    ;;
*" apply -k "*)
    dir=""
    prev=""
    for a in "$@"; do
        if [ "$prev" = -k ]; then dir=$a; fi
        prev=$a
    done
    "$real_kubectl" kustomize "$dir" >"$STUB_STATE/applied-$(basename "$dir").yaml" || exit 1
    ;;
*" get deploy trellis-webhook "*"TRELLIS_PROXY_IMAGE"*) env_value TRELLIS_PROXY_IMAGE ;;
*" get pods "*'(@.name=="proxy")].image'*)
    # What the webhook injects: the images its env names (STUB_INJECT=default: the image built in).
    proxy=$(env_value TRELLIS_PROXY_IMAGE)
    init=$(env_value TRELLIS_PROXYINIT_IMAGE)
    if [ "${STUB_INJECT:-env}" = default ]; then
        proxy=ghcr.io/trellis-mesh/trellis:0.1.0 init=ghcr.io/trellis-mesh/trellis:0.1.0
    fi
    for p in green-1 red-1 client-1 fortio-1; do printf '%s||%s|%s\n' "$p" "$init" "$proxy"; done
    printf '%s\n' 'blue-1|||'
    ;;
*" get mutatingwebhookconfiguration "*) printf 'Y2EK' ;;
*" get ns demo "*) printf 'enabled' ;;
*" get pods "*"jsonpath"*)
    printf '%s\n' \
        'green-1|green||proxyinit|green proxy|true true' \
        'red-1|red||proxyinit|red proxy|true true' \
        'blue-1|blue|||blue|true' \
        'client-1|client||proxyinit|client proxy|true true' \
        'fortio-1|fortio||proxyinit|fortio proxy|true true'
    ;;
*" fortio load "*" -n 300 "*)
    printf '%s\n' 'Code 200 : 280 (93.3 %)' 'Code 503 : 20 (6.7 %)' 'All done 300 calls'
    ;;
*" fortio load "*" -t 20s "*)
    # The load that holds green's pool: it runs until the samples are taken, unless told to abort.
    if [ "${STUB_HOLD:-run}" = abort ]; then
        echo 'Aborting because of error 503'
        exit 1
    fi
    "$real_sleep" 2
    ;;
*" fortio curl "*) printf '%s\n' 'HTTP/1.1 503 Service Unavailable' 'x-envoy-overloaded: true' ;;
*" deploy/green -c proxy -- curl "*) echo 'cluster.inbound_8080.upstream_rq_pending_overflow: 12' ;;
*" logs deploy/green -c proxy "*) echo '[t] "GET / HTTP/1.1" 503 UO 0 81 0 - "-"' ;;
*" loadgen "*) echo '{"codes":{"200":8,"503":42}}' ;;
*" deploy/client -c proxy -- curl "*) echo 'cluster.outbound_red.upstream_rq_pending_overflow: 42' ;;
esac
exit 0
EOF
chmod +x "$stubs"/*

failures=0
check() { # check <description> <command...>
    local what=$1
    shift
    if "$@"; then
        echo "  ok: $what"
    else
        echo "  FAIL: $what" >&2
        failures=$((failures + 1))
    fi
}

absent() { # absent <ERE> <file>: no line of <file> matches
    ! grep -qE "$1" "$2"
}

run() { # run <name> <env...>: run.sh with the stubs; its output in $work/<name>.out
    local name=$1
    shift
    mkdir -p "$work/$name"
    : >"$work/$name.log"
    set +e
    env PATH="$stubs:$PATH" STUB_LOG="$work/$name.log" STUB_STATE="$work/$name" "$@" \
        bash "$root/tests/kind/run.sh" >"$work/$name.out" 2>&1
    rc=$?
    set -e
}

echo "== dry run 1: a healthy cluster"
run ok IMAGE=registry.example/trellis:dry
log=$work/ok.log
if [ "$rc" -ne 0 ]; then cat "$work/ok.out" >&2; fi
check "run.sh passes (rc $rc)" test "$rc" -eq 0
hold_lines() { grep -E '^kubectl .* fortio load .*-t 20s' "$log"; }
check "the holding load is sent once" test "$(hold_lines | wc -l)" -eq 1
check "the holding load passes -allow-initial-errors" grep -qE '^kubectl .* fortio load .*-t 20s.* -allow-initial-errors( |$)' "$log"
check "the -n 300 load passes -allow-initial-errors" grep -qE '^kubectl .* fortio load .*-n 300 -allow-initial-errors( |$)' "$log"
check "our image is built" grep -qxF 'docker build -t registry.example/trellis:dry .' "$log"
check "our image is kind-loaded" grep -qxF 'kind load docker-image registry.example/trellis:dry --name trellis-e2e' "$log"
check "only one image is kind-loaded" test "$(grep -c '^kind load' "$log")" -eq 1
check "fortio is neither pulled nor loaded" absent '^(docker|kind) .*fortio' "$log"
check "nothing is docker-pulled" absent '^docker pull' "$log"
check "the cluster is deleted" grep -qxF 'kind delete cluster --name trellis-e2e' "$log"
check "run.sh reports success" grep -qF 'e2e-kind: all checks passed' "$work/ok.out"
node_image='kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f'
check "the kind node image is pinned by digest" grep -qxF "kind create cluster --name trellis-e2e --image $node_image --wait 180s" "$log"
# Item 3: IMAGE reaches every reference, through kustomize overlays (images:), not manifests/ as is.
install=$work/ok/applied-install.yaml demo=$work/ok/applied-demo.yaml
check "the install and the demo are applied through overlays" test -s "$install" -a -s "$demo"
check "manifests/ is never applied as is" absent '^kubectl .* apply -k manifests' "$log"
check "nothing applied names the default image" absent 'ghcr\.io/trellis-mesh' "$install"
check "nothing applied for the demo names the default image" absent 'ghcr\.io/trellis-mesh' "$demo"
check "the webhook and control Deployments run IMAGE" \
    test "$(grep -cxF '        image: registry.example/trellis:dry' "$install")" -eq 2
check "the webhook injects IMAGE as proxy and proxyinit" \
    test "$(grep -cxF '          value: registry.example/trellis:dry' "$install")" -eq 2
check "the demo apps run IMAGE" grep -qxF '        image: registry.example/trellis:dry' "$demo"
check "run.sh checks the injected images" grep -qF 'proxyinit [registry.example/trellis:dry] proxy [registry.example/trellis:dry]' "$work/ok.out"

# Item 4: a namespace enforcing Pod Security baseline.
check "the Pod Security namespace is labelled for injection and enforce=baseline" \
    grep -qE '^kubectl .* label namespace trellis-psa sidecarInjectorWebhook=enabled pod-security.kubernetes.io/enforce=baseline( |$)' "$log"
check "run.sh shows kubectl's 403 from the webhook for a bare pod" \
    grep -qF 'kubectl run (baseline): Error from server (Forbidden): admission webhook "sidecar-injector.trellis.dev" denied the request' "$work/ok.out"
check "and for restricted" grep -qF 'denied the request: trellis: pod refused: namespace "trellis-psa" enforces Pod Security level "restricted"' "$work/ok.out"
check "a Deployment is created there" grep -qE '^kubectl .* -n trellis-psa create deployment psa-app ' "$log"
check "run.sh shows the ReplicaSet's FailedCreate event with the webhook's message" \
    grep -qF 'event: ReplicaSet Error creating: admission webhook "sidecar-injector.trellis.dev" denied the request: trellis: pod refused: namespace "trellis-psa" enforces Pod Security level "baseline"' "$work/ok.out"
check "the webhook's right to watch namespaces is checked" grep -qE '^kubectl .* auth can-i watch namespaces --as=system:serviceaccount:trellis-system:trellis-webhook' "$log"
check "then the namespace is relabelled privileged and the Deployment rolls out" \
    grep -qE '^kubectl .* -n trellis-psa rollout status deploy/psa-app ' "$log"
check "run.sh sees psa-app injected after relabelling" grep -qF 'after relabelling: psa-app-7d9f-x2k4q|proxyinit|true true' "$work/ok.out"
# Item 7: a forced CA rotation with pods created throughout.
env_in() { grep -A1 -F "name: $1" "$install" | sed -n 's/^ *value: //p'; }
check "the install overlay sets the webhook's --bootstrap-interval to 5s" test "$(env_in TRELLIS_BOOTSTRAP_INTERVAL)" = 5s
check "... and its --serving-report-ttl to 30s" test "$(env_in TRELLIS_SERVING_REPORT_TTL)" = 30s
check "the rotation is forced with trellis.dev/rotate=now" \
    grep -qE '^kubectl .* -n trellis-system annotate secret trellis-webhook-tls trellis.dev/rotate=now' "$log"
check "pods go through the webhook during the rotation (server-side dry run)" \
    test "$(grep -cE '^kubectl .* -n demo run rotation-[0-9]+ .*--dry-run=server' "$log")" -ge 3
check "run.sh follows the rotation to its end with no pod refused" \
    grep -qF 'phases seen: trusting-next serving-next stable; pods admitted 3, refused 0' "$work/ok.out"
check "run.sh reads the caBundle's serial and CAs before and after" \
    grep -qF 'after: Secret stable|3|, caBundle serial 3 with 1 CA(s)' "$work/ok.out"

echo "== dry run 2: the holding load stops early"
run abort STUB_HOLD=abort
check "run.sh fails (rc $rc)" test "$rc" -ne 0
check "it says the load stopped before the sample" \
    grep -qF "the fortio load holding green's pool stopped before the sample: Aborting because of error 503" "$work/abort.out"
check "no sample is taken once the load has stopped" absent '^kubectl .* fortio curl ' "$work/abort.log"

echo "== dry run 3: IMAGE with a registry port and a digest"
digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
run digest IMAGE="registry.example:5000/team/trellis@$digest"
if [ "$rc" -ne 0 ]; then cat "$work/digest.out" >&2; fi
check "run.sh passes (rc $rc)" test "$rc" -eq 0
check "the webhook injects the image by digest" \
    test "$(grep -cxF "          value: registry.example:5000/team/trellis@$digest" "$work/digest/applied-install.yaml")" -eq 2
check "nothing applied names the default image" absent 'ghcr\.io/trellis-mesh' "$work/digest/applied-install.yaml"

echo "== dry run 4: the webhook injects the default image regardless"
run inject IMAGE=registry.example/trellis:dry STUB_INJECT=default
check "run.sh fails (rc $rc)" test "$rc" -ne 0
check "it says the injected containers do not run IMAGE" \
    grep -qF 'some injected containers do not run IMAGE=registry.example/trellis:dry' "$work/inject.out"

echo "== dry run 5: a pod is refused during the CA rotation"
run refuse IMAGE=registry.example/trellis:dry STUB_ROTATION=refuse
check "run.sh fails (rc $rc)" test "$rc" -ne 0
check "it shows the refusal" grep -qF 'x509: certificate signed by unknown authority' "$work/refuse.out"
check "it says pods were refused during the rotation" grep -qF 'pod(s) refused during the CA rotation' "$work/refuse.out"

echo "== dry run 6: the rotation never completes"
run stuck IMAGE=registry.example/trellis:dry STUB_ROTATION=stuck ROTATION_TIMEOUT=3
check "run.sh fails (rc $rc)" test "$rc" -ne 0
check "it says the rotation did not complete" grep -qF 'the rotation did not complete within 3 rounds' "$work/stuck.out"

echo "== dry run 7: a pod in a baseline namespace is admitted"
run psa IMAGE=registry.example/trellis:dry STUB_PSA=admit
check "run.sh fails (rc $rc)" test "$rc" -ne 0
check "it says the bare pod was admitted" grep -qF 'a bare pod in trellis-psa (enforce=baseline) was admitted' "$work/psa.out"

if [ "$failures" -ne 0 ]; then
    echo "tests/kind dry run: $failures check(s) failed" >&2
    exit 1
fi
echo "tests/kind dry run: all checks passed"
