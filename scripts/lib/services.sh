# Shared set-up for ./scripts/dev and ./scripts/test: installs what is missing from Debian, and
# starts or stops a private PostgreSQL cluster and Redis server on loopback under .convo/.
# Sourced, not run. Every function prints what it does on stderr and fails loudly.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
CONVO_OS_USER=${CONVO_OS_USER:-convo}

log() { printf '[convo] %s\n' "$*" >&2; }
die() { printf '[convo] error: %s\n' "$*" >&2; exit 1; }

# Runs a command as the unprivileged user that owns the PostgreSQL cluster (initdb refuses root).
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        # From /, which that user can enter: the caller's folder may be out of its reach (every path is absolute).
        (cd / && runuser -u "$CONVO_OS_USER" -- "$@")
    else
        "$@"
    fi
}

# apt_install PACKAGE…: installs the Debian packages given (none: nothing), with sudo unless root.
apt_install() {
    [ $# -gt 0 ] || return 0
    log "installing from Debian: $*"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_dependencies() {
    local missing=()
    [ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15 postgresql-contrib)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    [ -f /usr/include/hiredis/hiredis.h ] || missing+=(libhiredis-dev)
    [ -f /usr/include/openssl/evp.h ] || missing+=(libssl-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    apt_install "${missing[@]}"
    command -v swift >/dev/null 2>&1 || die "swift is not on PATH: install the Swift 6 toolchain first"
    if [ "$(id -u)" -eq 0 ] && ! id -u "$CONVO_OS_USER" >/dev/null 2>&1; then
        log "creating the unprivileged user '$CONVO_OS_USER' that runs the private PostgreSQL"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$CONVO_OS_USER"
    fi
}

# The test tools from PyPI, pinned, in a virtualenv under .convo/venv (made once, then reused).
SCHEMATHESIS_VERSION=4.32.5
STANDARDWEBHOOKS_VERSION=1.3.0
SELENIUM_VERSION=4.50.0
install_test_tools() {
    local venv=.convo/venv
    # The console's browser tests drive Debian's Chromium through its driver.
    local browser=()
    command -v chromium >/dev/null 2>&1 || browser+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || browser+=(chromium-driver)
    apt_install "${browser[@]}"
    if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" ||
        ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('standardwebhooks') != '$STANDARDWEBHOOKS_VERSION' or m.version('selenium') != '$SELENIUM_VERSION')" 2>/dev/null; then
        log "installing schemathesis $SCHEMATHESIS_VERSION, standardwebhooks $STANDARDWEBHOOKS_VERSION and selenium $SELENIUM_VERSION into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" "standardwebhooks==$STANDARDWEBHOOKS_VERSION" \
            "selenium==$SELENIUM_VERSION" >"$venv.log" 2>&1 ||
            { tail -20 "$venv.log" >&2; die "could not install the test tools"; }
    fi
    export CONVO_SCHEMATHESIS=$PWD/$venv/bin/schemathesis
    # The webhook tests' receiver checks signatures with the Standard Webhooks reference library.
    export CONVO_TEST_PYTHON=$PWD/$venv/bin/python
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a port on loopback that nothing listens on.
free_port() {
    # Below the kernel's ephemeral ports (32768 and up by default): a port found free there can be taken by
    # an outgoing connection before the server binds it.
    local port low=32768
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
    [ "$low" -gt 21000 ] 2>/dev/null || low=32768
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % (low - 20000)))
        port_in_use "$port" || { echo "$port"; return 0; }
    done
    die "no free port found on 127.0.0.1"
}

# pg_home DIR: where the PostgreSQL cluster of DIR (.convo/dev or .convo/test) lives, created and owned by
# the user that runs it. As root, the cluster runs as $CONVO_OS_USER, who must reach every folder above it: a
# clone under /root (0700) or inside a `mktemp -d` folder is out of its reach, and its owner's permissions are
# not ours to loosen. Then the cluster lives in /var/lib/convo/clusters/<hash of DIR>/ (0700, owned by
# $CONVO_OS_USER) and DIR/pg is a link to it; otherwise in DIR/pg itself. Everything else stays under DIR.
pg_home() {
    local dir=$1
    if [ "$(id -u)" -ne 0 ]; then
        mkdir -p "$dir/pg"
        echo "$dir/pg"
        return
    fi
    if [ ! -L "$dir/pg" ]; then
        mkdir -p "$dir/pg"
        chown "$CONVO_OS_USER" "$dir/pg"
        if runuser -u "$CONVO_OS_USER" -- test -w "$dir/pg" 2>/dev/null; then
            echo "$dir/pg"
            return
        fi
        rmdir "$dir/pg" 2>/dev/null || die "$dir/pg holds files that user $CONVO_OS_USER cannot reach: move them away"
    fi
    local home
    home=${CONVO_CLUSTERS_DIR:-/var/lib/convo/clusters}/$(printf '%s' "$dir" | sha256sum | cut -c1-16)
    mkdir -p "$home"
    chmod 755 "$(dirname "$home")"
    chown "$CONVO_OS_USER" "$home"
    chmod 700 "$home"
    ln -sfn "$home" "$dir/pg"
    echo "$home"
}

# start_services DIR PG_PORT REDIS_PORT: starts both servers, exports CONVO_DATABASE_URL and CONVO_REDIS_URL.
start_services() {
    local dir=$1 pg_port=$2 redis_port=$3
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    stop_services "$dir" # a stale run (killed script, reboot) leaves servers or pid files behind
    local pg
    pg=$(pg_home "$dir")
    local pgdata=$pg/data
    mkdir -p "$dir/redis"
    if [ ! -f "$pgdata/PG_VERSION" ]; then
        rm -rf "$pgdata"
        log "initdb $pgdata"
        as_pg_user "$PG_BIN/initdb" -D "$pgdata" -U convo --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    rm -f "$pgdata/postmaster.pid"
    log "starting PostgreSQL on 127.0.0.1:$pg_port"
    as_pg_user "$PG_BIN/pg_ctl" -D "$pgdata" -l "$pg/server.log" -w -t 60 \
        -o "-p $pg_port -k $pg -c listen_addresses=127.0.0.1 -c max_connections=300 ${CONVO_PG_OPTIONS:-}" start >/dev/null ||
        { tail -20 "$pg/server.log" >&2; die "PostgreSQL did not start"; }
    if ! as_pg_user "$PG_BIN/psql" -h 127.0.0.1 -p "$pg_port" -U convo -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'convo'" | grep -q 1; then
        as_pg_user "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U convo convo
    fi
    log "starting Redis on 127.0.0.1:$redis_port"
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --daemonize yes \
        --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" --save '' --appendonly no >/dev/null ||
        die "Redis did not start"
    for _ in $(seq 1 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 || die "Redis does not answer on port $redis_port"
    echo "$pg_port $redis_port" >"$dir/ports"
    export CONVO_DATABASE_URL="postgres://convo@127.0.0.1:$pg_port/convo"
    export CONVO_REDIS_URL="redis://127.0.0.1:$redis_port"
}

# stop_services DIR: stops what start_services started there; quiet when nothing runs.
stop_services() {
    local dir=$1
    [ -d "$dir" ] || return 0
    # Absolute: as_pg_user runs its command from /.
    dir=$(cd "$dir" && pwd)
    # The cluster's own path, not through the link: the PostgreSQL user cannot pass through DIR when it is
    # inside a folder only root enters (a clone under /root or inside `mktemp -d`), and pg_ctl would fail.
    local pgdata
    pgdata=$(readlink -f "$dir/pg")/data
    if [ -f "$pgdata/postmaster.pid" ]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop >/dev/null 2>&1 || true
        # Still running (pg_ctl could not reach it): a fast shutdown by its pid, if that pid is this cluster's postmaster.
        local pid
        pid=$(head -1 "$pgdata/postmaster.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $pgdata "; then
            kill -INT "$pid" 2>/dev/null
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    if [ -f "$dir/redis/redis.pid" ]; then
        local pid
        pid=$(cat "$dir/redis/redis.pid" 2>/dev/null)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$dir/redis/redis.pid"
    fi
}

# check_private_clone: starts and stops the services from a clone inside a 0700 folder (as a clone under
# /root, or inside `mktemp -d`, is), which the unprivileged PostgreSQL user cannot enter. Only as root,
# where the cluster runs as that user. Clones the committed HEAD; removes all it made.
check_private_clone() {
    [ "$(id -u)" -eq 0 ] || return 0
    local outer status=0
    outer=$(mktemp -d)
    chmod 700 "$outer"
    git clone -q "$PWD" "$outer/convo" || die "could not clone into $outer"
    (
        cd "$outer/convo"
        source scripts/lib/services.sh
        # Whatever fails, the services are stopped and what was made removed.
        set +e
        # In a subshell of its own (a failure exits it, as it would the caller), its output printed when it
        # fails: the folder, and the logs in it, are removed below.
        (set -e; start_services .convo/test "$(free_port)" "$(free_port)") >"$outer/start.log" 2>&1
        ok=$?
        if [ "$ok" -eq 0 ]; then
            read -r port _ <.convo/test/ports
            as_pg_user "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U convo -d convo -Atqc "SELECT 1" | grep -qx 1
            ok=$?
        else
            cat "$outer/start.log" >&2
        fi
        stop_services "$(pwd)/.convo/test"
        target=$(readlink -f .convo/test/pg)
        case "$target" in "$outer"/*) ;; *) rm -rf "$target" ;; esac
        exit $ok
    ) || status=$?
    rm -rf "$outer"
    [ "$status" -eq 0 ] || die "the services did not start from a clone inside a 0700 folder"
    log "checked: the services start from a clone inside a 0700 folder"
}

# The master key of visitors' data keys (see README, "Personal data"): $1/master.key, made once and kept with
# the data it protects; exported as CONVO_MASTER_KEY_FILE unless a key is given already.
ensure_master_key() {
    local dir=$1
    if [ -n "${CONVO_MASTER_KEY:-}" ] || [ -n "${CONVO_MASTER_KEY_FILE:-}" ]; then
        return
    fi
    mkdir -p "$dir"
    if [ ! -s "$dir/master.key" ]; then
        (umask 077 && head -c 32 /dev/urandom | base64 >"$dir/master.key")
    fi
    export CONVO_MASTER_KEY_FILE="$PWD/$dir/master.key"
}
