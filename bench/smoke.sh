#!/usr/bin/env bash
# make bench-smoke, part of `make test`: every bench script run once in smoke mode (SMOKE=1: one
# round, about a second per step, small counts; see bench/lib.sh), so that a benchmark that no
# longer produces its tables fails CI instead of rotting unseen.
#
# It checks only that each table was produced: the script exits 0 and prints, for each of its
# `# smoke-expect: REGEX` comment lines, a line matching REGEX (an extended regex; {n} stands for a
# number). Figures are never compared: a smoke run's numbers mean nothing. Every bench/*.sh but
# lib.sh and this file is run, and one with no smoke-expect lines fails, so a new bench script
# cannot join unchecked. Arguments, if any, name the scripts to run instead of all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

num='[0-9]+([.][0-9]+)?'
if [ $# -gt 0 ]; then scripts=("$@"); else scripts=(bench/*.sh); fi
failed=()
for script in "${scripts[@]}"; do
    case $script in bench/lib.sh | bench/smoke.sh) continue ;; esac
    mapfile -t expect < <(sed -n 's/^# smoke-expect: //p' "$script")
    if [ ${#expect[@]} -eq 0 ]; then
        echo "bench-smoke: $script has no '# smoke-expect:' lines saying what its tables look like"
        failed+=("$script")
        continue
    fi
    echo "bench-smoke: SMOKE=1 $script"
    log=$(mktemp)
    start=$SECONDS
    rc=0
    SMOKE=1 "$script" >"$log" 2>&1 || rc=$?
    sed 's/^/    /' "$log"
    missing=0
    if [ "$rc" != 0 ]; then
        echo "bench-smoke: $script exited with $rc"
        missing=1
    else
        for re in "${expect[@]}"; do
            if ! grep -Eq -- "${re//\{n\}/$num}" "$log"; then
                echo "bench-smoke: $script printed no line matching: $re"
                missing=1
            fi
        done
    fi
    rm -f "$log"
    if [ "$missing" = 0 ]; then
        echo "bench-smoke: $script ok (${#expect[@]} lines checked, $((SECONDS - start)) s)"
    else
        failed+=("$script")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "bench-smoke: FAILED: ${failed[*]}"
    exit 1
fi
echo "bench-smoke: every bench script produced its tables"
