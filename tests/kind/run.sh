#!/usr/bin/env bash
# make e2e-kind: Trellis on a real cluster, from namespace label to 503.
# Needs docker, kind and kubectl (see README.md here). Creates the kind cluster $CLUSTER, builds and
# loads our image (the nodes pull fortio themselves), installs Trellis, deploys the demo and a fortio client, checks the injection and
# the inbound/outbound pools, the webhook's refusal in a namespace enforcing Pod Security baseline
# (issue 16, item 4) and a forced CA rotation with pods created throughout (item 7), and deletes the
# cluster on exit (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-trellis-e2e}
IMAGE=${IMAGE:-ghcr.io/trellis-mesh/trellis:0.1.0}
KEEP=${KEEP:-0}
# The kind node image: Kubernetes 1.33, pinned by digest (tests/kind/README.md: the matrix, and
# where the digest comes from). NODE_IMAGE= runs another version.
NODE_IMAGE=${NODE_IMAGE:-kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f}
NS=demo
# Item 4: the namespace that enforces Pod Security baseline.
PSA_NS=trellis-psa
# Item 7: the webhook's --bootstrap-interval in this run (one rotation step per round; default 60s)
# and its --serving-report-ttl, so a forced CA rotation completes in well under a minute; and how
# many one-second rounds of pod creation to wait for it.
BOOTSTRAP_INTERVAL=${BOOTSTRAP_INTERVAL:-5s}
SERVING_REPORT_TTL=${SERVING_REPORT_TTL:-30s}
ROTATION_TIMEOUT=${ROTATION_TIMEOUT:-180}
DEFAULT_IMAGE=ghcr.io/trellis-mesh/trellis

for tool in docker kind kubectl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "e2e-kind: needs $tool on PATH (see tests/kind/README.md)" >&2
        exit 2
    fi
done

k() { kubectl --context "kind-$CLUSTER" "$@"; }
step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "e2e-kind: FAIL: $*" >&2
    exit 1
}

# Under target/ (git-ignored): kustomize takes only a relative path to a base, and this keeps it
# fixed, ../../../<base>, without GNU realpath.
mkdir -p target
overlays=$(mktemp -d target/e2e-kind.XXXXXX)
on_exit() {
    local rc=$?
    rm -rf "$overlays"
    if [ "$rc" -ne 0 ] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        echo "--- state at failure" >&2
        k get pods -A -o wide >&2 || true
        k -n trellis-system logs deploy/trellis-webhook --tail=50 >&2 || true
        k -n "$NS" get events --sort-by=.lastTimestamp >&2 || true
    fi
    if [ "$KEEP" = 1 ]; then
        echo "e2e-kind: keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
    else
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap on_exit EXIT

# IMAGE reaches the cluster the way a user's override does: kustomize overlays of manifests/ and
# manifests/demo/ with one `images:` entry (as examples/own-registry/), which also rewrites the
# images the webhook injects (manifests/kustomizeconfig.yaml).
image_overlay() { # image_overlay <name> <base>: $overlays/<name>, a kustomization of <base> whose images are IMAGE
    local dir=$overlays/$1 base=../../../$2 ref=$IMAGE name tag="" digest=""
    mkdir -p "$dir"
    if [[ $ref == *@* ]]; then
        digest=${ref#*@}
        ref=${ref%%@*}
    fi
    name=$ref
    if [[ ${ref##*/} == *:* ]]; then
        tag=${ref##*:}
        name=${ref%:*}
    fi
    # docker's default tag; without one kustomize would keep the base's 0.1.0.
    if [ -z "$tag" ] && [ -z "$digest" ]; then tag=latest; fi
    {
        echo "apiVersion: kustomize.config.k8s.io/v1beta1"
        echo "kind: Kustomization"
        echo "resources:"
        echo "  - $base"
        echo "images:"
        echo "  - name: $DEFAULT_IMAGE"
        echo "    newName: $name"
        if [ -n "$digest" ]; then echo "    digest: $digest"; else echo "    newTag: $tag"; fi
    } >"$dir/kustomization.yaml"
}
# The install overlay also sets the webhook's rotation pace for this run (item 7).
rotation_pace() { # rotation_pace <name>: adds to $overlays/<name> a patch of the webhook's env
    cat >>"$overlays/$1/kustomization.yaml" <<EOF
patches:
  - target:
      kind: Deployment
      name: trellis-webhook
    patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: trellis-webhook
      spec:
        template:
          spec:
            containers:
              - name: webhook
                env:
                  - name: TRELLIS_BOOTSTRAP_INTERVAL
                    value: "$BOOTSTRAP_INTERVAL"
                  - name: TRELLIS_SERVING_REPORT_TTL
                    value: "$SERVING_REPORT_TTL"
EOF
}
image_overlay install manifests
rotation_pace install
image_overlay demo manifests/demo
# Unless IMAGE is the default, nothing we apply may still name the default image.
for o in install demo; do
    rendered=$(kubectl kustomize "$overlays/$o") || fail "kubectl kustomize of the $o overlay failed"
    if [ "${IMAGE%%[:@]*}" != "$DEFAULT_IMAGE" ] && grep -F "$DEFAULT_IMAGE" <<<"$rendered"; then
        fail "the $o overlay still names $DEFAULT_IMAGE (IMAGE=$IMAGE)"
    fi
done

step "kind cluster $CLUSTER"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 180s
fi

step "image $IMAGE"
docker build -t "$IMAGE" .
# Only our image is pre-loaded: it is not published. The nodes pull public images (fortio) themselves;
# `docker pull` + `kind load` of a multi-platform image fails with Docker's containerd image store
# ("content digest ... not found", kind#3795).
kind load docker-image "$IMAGE" --name "$CLUSTER"

step "install: kubectl apply -k manifests/, images set to $IMAGE"
k apply -k "$overlays/install"
k -n trellis-system rollout status deploy/trellis-webhook --timeout=180s
injects=$(k -n trellis-system get deploy trellis-webhook \
    -o jsonpath='{.spec.template.spec.containers[?(@.name=="webhook")].env[?(@.name=="TRELLIS_PROXY_IMAGE")].value}')
[ "$injects" = "$IMAGE" ] || fail "the webhook injects proxy image '$injects', not IMAGE=$IMAGE"
# The webhook bootstraps its certificate and patches the caBundle; wait for it.
ca=""
for _ in $(seq 90); do
    ca=$(k get mutatingwebhookconfiguration trellis-sidecar-injector \
        -o jsonpath='{.webhooks[0].clientConfig.caBundle}' 2>/dev/null || true)
    [ -n "$ca" ] && break
    sleep 2
done
[ -n "$ca" ] || fail "the webhook never set the caBundle of trellis-sidecar-injector"

step "demo: namespace $NS labelled sidecarInjectorWebhook=enabled, colour apps, client, fortio"
k apply -f manifests/demo/namespace.yaml
[ "$(k get ns "$NS" -o jsonpath='{.metadata.labels.sidecarInjectorWebhook}')" = enabled ] ||
    fail "namespace $NS is not labelled sidecarInjectorWebhook=enabled"
k apply -k "$overlays/demo"
k apply -f tests/kind/fortio.yaml
deployments=(green red blue client fortio)
# Restart so that every pod is (re)created through the webhook, as a user adopting the mesh would.
k -n "$NS" rollout restart deployment "${deployments[@]}"
for d in "${deployments[@]}"; do
    k -n "$NS" rollout status "deploy/$d" --timeout=180s
done

step "every meshed pod is 2/2 with init container proxyinit; blue (opted out) is 1/1"
pods_ok=1
while IFS='|' read -r name app deleted init containers ready; do
    if [ -z "$name" ] || [ -n "$deleted" ]; then continue; fi
    want_init=proxyinit want_ready="true true"
    if [ "$app" = blue ]; then want_init="" want_ready="true"; fi
    if [ "$init" != "$want_init" ] || [ "$ready" != "$want_ready" ]; then
        echo "  $name: init [$init] containers [$containers] ready [$ready]: expected init [$want_init] ready [$want_ready]" >&2
        pods_ok=0
    else
        echo "  $name: init [$init] containers [$containers] ready [$ready]"
    fi
done < <(k -n "$NS" get pods -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.metadata.labels.app}{"|"}{.metadata.deletionTimestamp}{"|"}{.spec.initContainers[*].name}{"|"}{.spec.containers[*].name}{"|"}{.status.containerStatuses[*].ready}{"\n"}{end}')
[ "$pods_ok" = 1 ] || fail "some pods are not as injected"

step "the injected proxy and proxyinit run IMAGE=$IMAGE"
images_ok=1
while IFS='|' read -r name deleted init proxy; do
    if [ -z "$name" ] || [ -n "$deleted" ] || [ -z "$init$proxy" ]; then continue; fi
    echo "  $name: proxyinit [$init] proxy [$proxy]"
    if [ "$init" != "$IMAGE" ] || [ "$proxy" != "$IMAGE" ]; then images_ok=0; fi
done < <(k -n "$NS" get pods -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.metadata.deletionTimestamp}{"|"}{.spec.initContainers[?(@.name=="proxyinit")].image}{"|"}{.spec.containers[?(@.name=="proxy")].image}{"\n"}{end}')
[ "$images_ok" = 1 ] || fail "some injected containers do not run IMAGE=$IMAGE"

step "inbound pool: fortio load -c 30 -qps 0 -n 300 against green (max-connections 10, max-pending 10)"
# fortio's exit status says nothing about response codes; the counts below do.
out=$(k -n "$NS" exec deploy/fortio -c fortio -- \
    fortio load -c 30 -qps 0 -n 300 -allow-initial-errors -loglevel Warning \
    "http://green.$NS:8080/?delay_ms=500" 2>&1) || true
echo "$out" | grep -E '^(Code|All done|Aggregated Function Time)' || true
n503=$(echo "$out" | sed -n 's/^Code 503 : \([0-9]*\).*/\1/p')
n200=$(echo "$out" | sed -n 's/^Code 200 : \([0-9]*\).*/\1/p')
[ "${n503:-0}" -gt 0 ] || fail "no 503 from green's pool: $out"
[ "${n200:-0}" -gt 0 ] || fail "no 200 from green: $out"

# A 503 seen by curl while fortio holds green's pool full carries x-envoy-overloaded.
# -allow-initial-errors: with -t, fortio's warm-up sends one request per thread at once; about 10 of
# the 30 get 503 from the 10/10 pool, and without the flag fortio aborts after ~2 s, leaving the pool
# empty before the first sample. Every sample below first checks that the load is still running.
hold_log=$(mktemp)
k -n "$NS" exec deploy/fortio -c fortio -- \
    fortio load -c 30 -qps 0 -t 20s -allow-initial-errors -loglevel Error \
    "http://green.$NS:8080/?delay_ms=1000" >"$hold_log" 2>&1 &
hold=$!
sleep 5
overloaded=""
for _ in $(seq 10); do
    if ! kill -0 "$hold" 2>/dev/null; then
        wait "$hold" || true
        fail "the fortio load holding green's pool stopped before the sample: $(cat "$hold_log")"
    fi
    answer=$(k -n "$NS" exec deploy/fortio -c fortio -- \
        fortio curl -loglevel Error "http://green.$NS:8080/" 2>&1) || true
    if grep -i '^x-envoy-overloaded: true' <<<"$answer"; then
        overloaded=yes
        break
    fi
    sleep 1
done
wait "$hold" || true
rm -f "$hold_log"
[ -n "$overloaded" ] || fail "no 503 with x-envoy-overloaded: true while green's pool was full"

step "green's sidecar: kubectl exec deploy/green -c proxy -- curl -s localhost:9901/stats"
stats=$(k -n "$NS" exec deploy/green -c proxy -- curl -s localhost:9901/stats)
grep -E '^(cluster\.inbound_8080\.(upstream_cx_active|upstream_rq_pending_overflow|circuit_breakers\.default\.cx_open)|http\.inbound\.downstream_cx_active):' <<<"$stats" || true
overflow=$(echo "$stats" | sed -n 's/^cluster\.inbound_8080\.upstream_rq_pending_overflow: //p')
[ "${overflow:-0}" -gt 0 ] || fail "green's cluster.inbound_8080.upstream_rq_pending_overflow is ${overflow:-absent}"
green_log=$(k -n "$NS" logs deploy/green -c proxy)
grep -m1 '" 503 UO ' <<<"$green_log" || fail "no UO line in green's access log"

step "outbound pool: the client (outbound max-connections 3, max-pending 1) sends 20 x 50 to red"
res=$(k -n "$NS" exec deploy/client -c client -- loadgen "http://red.$NS:8080/?delay_ms=200" -c 20 -n 50)
echo "  $res"
c503=$(echo "$res" | sed -n 's/.*"503":\([0-9]*\).*/\1/p')
[ "${c503:-0}" -gt 25 ] || fail "expected most of 50 requests to be 503, got ${c503:-0}"
client_stats=$(k -n "$NS" exec deploy/client -c proxy -- curl -s localhost:9901/stats)
grep -E 'upstream_rq_pending_overflow: [1-9]' <<<"$client_stats" ||
    fail "no upstream_rq_pending_overflow on the client's sidecar"

step "Pod Security (issue 16, item 4): namespace $PSA_NS labelled sidecarInjectorWebhook=enabled and enforce=baseline"
# Pod Security admission runs after mutation and would reject proxyinit's NET_ADMIN/NET_RAW with a
# message about capabilities nobody asked for; the webhook refuses first, saying why and what to do.
k create namespace "$PSA_NS"
k label namespace "$PSA_NS" sidecarInjectorWebhook=enabled pod-security.kubernetes.io/enforce=baseline --overwrite
psa_message="namespace \"$PSA_NS\" enforces Pod Security level \"baseline\""
# A bare pod: kubectl itself prints the webhook's 403. The webhook learns the namespace's labels
# from its watch of Namespaces, moments after they are set (before that it injects, and Pod
# Security's own refusal comes back instead): try again for up to 20 s.
bare_pod_refused() { # bare_pod_refused <level>: kubectl run in $PSA_NS must get the webhook's 403 naming <level>
    local want="namespace \"$PSA_NS\" enforces Pod Security level \"$1\"" out=""
    for _ in $(seq 10); do
        if out=$(k -n "$PSA_NS" run psa-bare --image="$IMAGE" --restart=Never --command -- sleep 3600 2>&1); then
            fail "a bare pod in $PSA_NS (enforce=$1) was admitted: $out"
        fi
        grep -qF "$want" <<<"$out" && break
        sleep 2
    done
    echo "  kubectl run ($1): $out"
    grep -qF 'admission webhook "sidecar-injector.trellis.dev" denied the request' <<<"$out" ||
        fail "the bare pod was refused, but not by the webhook: $out"
    grep -qF "$want" <<<"$out" || fail "the refusal does not name the Pod Security level $1: $out"
}
bare_pod_refused baseline
# A Deployment: accepted; its ReplicaSet's FailedCreate event carries the webhook's message.
k -n "$PSA_NS" create deployment psa-app --image="$IMAGE" -- sleep 3600
event=""
for _ in $(seq 60); do
    event=$(k -n "$PSA_NS" get events --field-selector reason=FailedCreate \
        -o jsonpath='{range .items[*]}{.involvedObject.kind}{" "}{.message}{"\n"}{end}' 2>/dev/null |
        grep -F "$psa_message" | head -1 || true)
    [ -n "$event" ] && break
    sleep 2
done
[ -n "$event" ] || fail "no FailedCreate event in $PSA_NS carries the webhook's message ($psa_message)"
echo "  event: $event"
[[ $event == ReplicaSet\ * ]] || fail "the FailedCreate event is not the ReplicaSet's: $event"
grep -qF 'label namespace' <<<"$event" || fail "the event does not say what to do: $event"
psa_pods=$(k -n "$PSA_NS" get pods -o name)
[ -z "$psa_pods" ] || fail "pods appeared in $PSA_NS while it enforces baseline: $psa_pods"
# The webhook may watch namespaces (its Pod Security cache) and do nothing else with them.
[ "$(k auth can-i watch namespaces --as=system:serviceaccount:trellis-system:trellis-webhook)" = yes ] ||
    fail "the webhook's ServiceAccount may not watch namespaces"
if [ "$(k auth can-i update namespaces --as=system:serviceaccount:trellis-system:trellis-webhook || true)" != no ]; then
    fail "the webhook's ServiceAccount may update namespaces"
fi
# restricted is refused the same way.
k label namespace "$PSA_NS" pod-security.kubernetes.io/enforce=restricted --overwrite
bare_pod_refused restricted
# The first remedy of the message: label the namespace privileged. The ReplicaSet retries by itself.
k label namespace "$PSA_NS" pod-security.kubernetes.io/enforce=privileged --overwrite
k -n "$PSA_NS" rollout status deploy/psa-app --timeout=300s
psa_pod=$(k -n "$PSA_NS" get pods -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.spec.initContainers[*].name}{"|"}{.status.containerStatuses[*].ready}{"\n"}{end}' | head -1)
echo "  after relabelling: $psa_pod"
[[ $psa_pod == *"|proxyinit|true true" ]] || fail "psa-app's pod is not injected 2/2 after relabelling: $psa_pod"
k delete namespace "$PSA_NS" --wait=false

step "CA rotation (issue 16, item 7): kubectl annotate secret trellis-webhook-tls trellis.dev/rotate=now, pods created throughout"
secret_state() { # phase|serial|rotate annotation of the webhook's Secret
    k -n trellis-system get secret trellis-webhook-tls \
        -o jsonpath='{.metadata.annotations.trellis\.dev/ca-rotation}{"|"}{.metadata.annotations.trellis\.dev/ca-bundle-serial}{"|"}{.metadata.annotations.trellis\.dev/rotate}'
}
bundle_state() { # serial|caBundle (base64) of trellis-sidecar-injector
    k get mutatingwebhookconfiguration trellis-sidecar-injector \
        -o jsonpath='{.metadata.annotations.trellis\.dev/ca-bundle-serial}{"|"}{.webhooks[0].clientConfig.caBundle}'
}
bundle_cas() { # the number of certificates in a base64 caBundle
    base64 -d <<<"$1" 2>/dev/null | grep -c 'BEGIN CERTIFICATE' || true
}
state=""
for _ in $(seq 60); do
    state=$(secret_state)
    [[ $state == stable\|* ]] && break
    sleep 2
done
[[ $state == stable\|* ]] || fail "the webhook's Secret is not stable before the rotation: $state"
serial0=$(cut -d'|' -f2 <<<"$state")
bundle0=$(bundle_state)
ca0=${bundle0#*|}
echo "  before: Secret $state, caBundle serial ${bundle0%%|*} with $(bundle_cas "$ca0") CA(s)"
k -n trellis-system annotate secret trellis-webhook-tls trellis.dev/rotate=now --overwrite
# Every second, a pod through the webhook (server-side dry run: the full admission chain, TLS to
# the webhook with the caBundle the API server holds at that moment; sideEffects: None), until the
# Secret is stable again with the serial two steps on (trust both CAs, then only the new one).
created=0 refused=0 phases="" done_state=""
for i in $(seq "$ROTATION_TIMEOUT"); do
    if out=$(k -n "$NS" run "rotation-$i" --image="$IMAGE" --restart=Never --dry-run=server \
        -o jsonpath='{.spec.initContainers[*].name}' --command -- sleep 1 2>&1) && [[ $out == *proxyinit* ]]; then
        created=$((created + 1))
    else
        refused=$((refused + 1))
        echo "  pod rotation-$i refused or not injected: $out" >&2
    fi
    state=$(secret_state)
    phase=${state%%|*}
    [[ " $phases " == *" $phase "* ]] || phases="$phases $phase"
    serial=$(cut -d'|' -f2 <<<"$state")
    if [ "$phase" = stable ] && [ "${serial:-0}" -ge $((serial0 + 2)) ]; then
        done_state=$state
        break
    fi
    sleep 1
done
echo "  phases seen:$phases; pods admitted $created, refused $refused"
[ -n "$done_state" ] || fail "the rotation did not complete within ${ROTATION_TIMEOUT} rounds: Secret $state"
[ "$refused" -eq 0 ] || fail "$refused pod(s) refused during the CA rotation (caBundle picked up too late by the API server?)"
[[ $phases == *serving-next* || $phases == *trusting-next* ]] || fail "no rotation step was seen (phases:$phases)"
[ -z "$(cut -d'|' -f3 <<<"$done_state")" ] || fail "trellis.dev/rotate is still set after the rotation: $done_state"
bundle1=$(bundle_state)
ca1=${bundle1#*|}
echo "  after: Secret $done_state, caBundle serial ${bundle1%%|*} with $(bundle_cas "$ca1") CA(s)"
[ "${bundle1%%|*}" = "$(cut -d'|' -f2 <<<"$done_state")" ] ||
    fail "the caBundle's serial ${bundle1%%|*} is not the Secret's: $done_state"
[ "$ca1" != "$ca0" ] || fail "the caBundle did not change through the rotation"
[ "$(bundle_cas "$ca1")" -eq 1 ] || fail "the caBundle holds $(bundle_cas "$ca1") CAs after the rotation, not only the new one"
# And a real pod after it: created, injected, running.
k -n "$NS" run rotation-after --image="$IMAGE" --restart=Never --command -- sleep 3600
k -n "$NS" wait pod/rotation-after --for=condition=Ready --timeout=120s
k -n "$NS" delete pod rotation-after --wait=false

step "e2e-kind: all checks passed"
