#!/usr/bin/env bash
# Dry run of tests/kind/run.sh with stub docker, kind, kubectl and sleep on PATH: each stub records
# its argv and answers what run.sh reads, so the script's control flow and the commands it sends to
# a cluster are checked without Docker. Two runs:
#   1. a healthy cluster: run.sh must pass; its commands are asserted (the load that holds green's
#      pool passes -allow-initial-errors; only our image is `kind load`ed; fortio is never pulled or
#      loaded, the nodes pull it);
#   2. the holding load exits early (as fortio does without -allow-initial-errors): run.sh must fail
#      and say the load stopped before the sample.
# Run by `cargo test -p sandbox --test kind_dry_run` (so by `make test`) and by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stubs=$work/bin
mkdir -p "$stubs"
real_sleep=$(command -v sleep)

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
EOF
cat >>"$stubs/kubectl" <<'EOF'
printf 'kubectl' >>"$STUB_LOG"; printf ' %q' "$@" >>"$STUB_LOG"; echo >>"$STUB_LOG"
args=" $* "
case "$args" in
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

echo "== dry run 2: the holding load stops early"
run abort STUB_HOLD=abort
check "run.sh fails (rc $rc)" test "$rc" -ne 0
check "it says the load stopped before the sample" \
    grep -qF "the fortio load holding green's pool stopped before the sample: Aborting because of error 503" "$work/abort.out"
check "no sample is taken once the load has stopped" absent '^kubectl .* fortio curl ' "$work/abort.log"

if [ "$failures" -ne 0 ]; then
    echo "tests/kind dry run: $failures check(s) failed" >&2
    exit 1
fi
echo "tests/kind dry run: all checks passed"
