# shellcheck shell=bash
# Shared by the bench scripts (sourced): the smoke switch, installing the peers, and the nginx and
# HAProxy set-ups every benchmark gives them (one worker, keep-alive on both sides, upstream
# connections reused).

# SMOKE=1 is every bench script's smoke mode, which `make test` runs (bench/smoke.sh): one round,
# about a second per step, small counts, so that a script that no longer produces its tables
# fails CI. Its figures are not measurements. A script takes its knobs' defaults from `knob` and
# lists the lines its tables must show in `# smoke-expect:` comments (see bench/smoke.sh).
SMOKE=${SMOKE:-0}

# knob FULL SMOKE: prints a knob's default, FULL, or SMOKE under SMOKE=1; a knob the caller set
# wins either way: ROUNDS=${ROUNDS:-$(knob 3 1)}.
knob() {
    if [ "$SMOKE" = 1 ]; then echo "$2"; else echo "$1"; fi
}

# smoke_note: says, in a smoke run, that the figures above are not to be read.
smoke_note() {
    if [ "$SMOKE" = 1 ]; then echo "(SMOKE=1: one short round, to show the tables are produced; not a measurement)"; fi
}

# bench_build: the release binaries and examples the benches run, built as `make test` builds them
# (whole workspace, dev-dependencies in): building one package alone resolves the shared crates'
# features differently and so rebuilds them, minutes of CI time for the smoke run.
bench_build() {
    cargo build -q --release --workspace --bins --examples
}

# bench_install CMD:PACKAGE...: installs (apt) the packages whose command is missing. The package
# lists are refreshed first: a fresh machine may have none, or stale ones.
bench_install() {
    local missing=() c
    for c in "$@"; do
        command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "bench: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# nginx_conf DIR LISTEN UPSTREAM [GLOBAL]: writes DIR/nginx.conf and prints its path. An empty
# UPSTREAM serves a 1 KiB body itself; otherwise it proxies to UPSTREAM with pooled keep-alive
# connections. GLOBAL is added to the main context (e.g. "master_process off;").
nginx_conf() {
    local dir=$1 listen=$2 up=$3 global=${4:-} body
    mkdir -p "$dir"
    {
        echo "worker_processes 1; daemon off; $global pid $dir/nginx.pid; error_log $dir/error.log warn;"
        echo "events { worker_connections 4096; }"
        echo "http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;"
        echo "  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;"
        if [ -z "$up" ]; then
            body=$(head -c 1024 /dev/zero | tr '\0' 'x')
            echo "  server { listen $listen; location / { default_type text/plain; return 200 '$body'; } } }"
        else
            echo "  upstream u { server $up; keepalive 256; }"
            echo "  server { listen $listen; location / { proxy_pass http://u; proxy_http_version 1.1;"
            echo "    proxy_set_header Connection \"\"; proxy_buffering off; } } }"
        fi
    } > "$dir/nginx.conf"
    echo "$dir/nginx.conf"
}

# h2_nginx_conf DIR LISTEN UPSTREAM [HOLE [GLOBAL]]: writes DIR/nginx.conf and prints its path;
# nginx_conf's set-up with HTTP/2 on both sides. An empty UPSTREAM is the shared upstream: a 1 KiB
# body, and, given HOLE, /slow proxied to 127.0.0.1:HOLE (bench/h2.sh's listener that never
# answers); otherwise grpc_pass to UPSTREAM over pooled keep-alive connections. GLOBAL is added to
# the main context.
h2_nginx_conf() {
    local dir=$1 listen=$2 up=$3 hole=${4:-} global=${5:-} body
    mkdir -p "$dir"
    {
        echo "worker_processes 1; daemon off; $global pid $dir/nginx.pid; error_log $dir/error.log warn;"
        echo "events { worker_connections 8192; }"
        echo "http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;"
        echo "  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;"
        if [ -z "$up" ]; then
            body=$(head -c 1024 /dev/zero | tr '\0' 'x')
            echo "  http2_max_concurrent_streams 2048;"
            echo "  server { listen $listen http2;"
            echo "    location / { default_type text/plain; return 200 '$body'; }"
            if [ -n "$hole" ]; then
                echo "    location /slow { proxy_pass http://127.0.0.1:$hole; proxy_read_timeout 300s; }"
            fi
            echo "  } }"
        else
            echo "  upstream u { server $up; keepalive 256; keepalive_requests 1000000; keepalive_timeout 300s; }"
            echo "  server { listen $listen http2; location / { grpc_pass grpc://u;"
            echo "    grpc_read_timeout 300s; grpc_send_timeout 300s; } } }"
        fi
    } > "$dir/nginx.conf"
    echo "$dir/nginx.conf"
}

# haproxy_cfg FILE LISTEN UPSTREAM: an HTTP-mode HAProxy, one thread, keep-alive and reuse on.
haproxy_cfg() {
    cat > "$1" <<CFG
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
frontend f
    bind $2
    default_backend b
backend b
    server s $3
CFG
}

# Measuring a contender's processes (bench/run.sh, bench/h2.sh): RSS in KiB averaged over them,
# on-CPU nanoseconds summed, KiB shown as MiB.
# nginx forks its worker: measure the worker, which does the work.
worker_of() { local kids; kids=$(pgrep -P "$1" 2>/dev/null | head -1); echo "${kids:-$1}"; }
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$(worker_of "$p")/status"))); done; echo $((t / $#)); }
# On-CPU nanoseconds of all threads of the processes (schedstat: exact, not 10 ms ticks).
cpu_ns() { local p; for p in "$@"; do cat "/proc/$(worker_of "$p")"/task/*/schedstat; done | awk '{t += $1} END {printf "%.0f", t}'; }
mib() { if [ "$1" = - ]; then echo -; else awk -v k="$1" 'BEGIN { printf "%.1fM", k / 1024 }'; fi; }
