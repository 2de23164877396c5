# Shared helpers for scripts/test, scripts/bench and scripts/dev: start throwaway local
# servers (PostgreSQL, anvil, moto for SQS + S3) on free loopback ports, and stop them again.
#
# Source this file, set SCRATCH to a private directory, call the start_* functions, and
# call stop_services on exit.

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
TOOLS_DIR="${CAS_TOOLS_DIR:-$ROOT/.tools}"
ANVIL_VERSION="1.7.1"
MOTO_VERSION="5.2.5"
_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
    local what=$1 limit=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# Run a PostgreSQL server binary: as the postgres user when we are root (initdb refuses root).
_pg() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_pg_bin() {
    local name=$1
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$dir/$name" ]]; then echo "$dir/$name"; return; fi
    done
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/$name" ]]; then
        echo "$(pg_config --bindir)/$name"
        return
    fi
    return 1
}

ensure_postgres_installed() {
    if _pg_bin initdb >/dev/null && _pg_bin pg_ctl >/dev/null; then return; fi
    log "PostgreSQL server binaries not found; installing the postgresql package"
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "install PostgreSQL server binaries (e.g. 'apt-get install postgresql') and retry" >&2
        return 1
    fi
}

# start_postgres: a cluster under $SCRATCH/pg (created if missing); exports DATABASE_URL
# (database "postgres").
start_postgres() {
    ensure_postgres_installed
    local initdb pg_ctl port dir
    initdb=$(_pg_bin initdb); pg_ctl=$(_pg_bin pg_ctl)
    dir="$SCRATCH/pg"
    mkdir -p "$dir"
    chmod 755 "$SCRATCH"
    if [[ $(id -u) == 0 ]]; then chown postgres "$dir"; fi
    port=$(free_port)
    # An existing cluster (scripts/dev keeps its data) is started as it is.
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        _pg "$initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$SCRATCH/initdb.log" 2>&1 \
            || { cat "$SCRATCH/initdb.log" >&2; return 1; }
    fi
    _pg "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${CAS_PG_FSYNC:-off} -c max_connections=300" start \
        >/dev/null || { cat "$dir/server.log" >&2; return 1; }
    PG_CTL="$pg_ctl"; PG_DATA="$dir/data"
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "postgres listening on 127.0.0.1:$port"
}

stop_postgres() {
    if [[ -n "${PG_DATA:-}" && -d "$PG_DATA" ]]; then
        _pg "$PG_CTL" -D "$PG_DATA" -m "${CAS_PG_STOP_MODE:-immediate}" -w stop >/dev/null 2>&1 || true
        PG_DATA=""
    fi
}

# ensure_anvil: sets ANVIL_BIN, installing anvil from npm into $TOOLS_DIR if needed.
ensure_anvil() {
    if [[ -n "${ANVIL_BIN:-}" && -x "$ANVIL_BIN" ]]; then return; fi
    if command -v anvil >/dev/null 2>&1; then ANVIL_BIN=$(command -v anvil); export ANVIL_BIN; return; fi
    local local_bin="$TOOLS_DIR/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    if [[ ! -x "$local_bin" ]]; then
        command -v npm >/dev/null 2>&1 || { echo "npm is needed to install anvil" >&2; return 1; }
        log "installing anvil $ANVIL_VERSION from npm into $TOOLS_DIR/anvil"
        mkdir -p "$TOOLS_DIR/anvil"
        (cd "$TOOLS_DIR/anvil" && { [[ -f package.json ]] || echo '{"name":"cas-tools-anvil","private":true}' >package.json; } \
            && npm install --no-audit --no-fund --ignore-scripts --silent "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION" >/dev/null)
    fi
    ANVIL_BIN="$local_bin"
    export ANVIL_BIN
}

_rpc_ready() {
    curl -sf -X POST -H 'content-type: application/json' \
        --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$1"
}

# start_anvil [CHAIN_ID]: exports ETH_RPC_URL.
start_anvil() {
    local chain_id=${1:-1337} port
    ensure_anvil
    port=$(free_port)
    "$ANVIL_BIN" --host 127.0.0.1 --port "$port" --chain-id "$chain_id" >"$SCRATCH/anvil.log" 2>&1 &
    _PIDS+=($!)
    export ETH_RPC_URL="http://127.0.0.1:$port"
    wait_for anvil 30 _rpc_ready "$ETH_RPC_URL"
    log "anvil (chain $chain_id) listening on $ETH_RPC_URL"
}

# ensure_moto: sets MOTO_BIN, installing moto (S3 + SQS only) into a venv under $TOOLS_DIR if
# needed.
ensure_moto() {
    local venv="$TOOLS_DIR/moto-venv"
    MOTO_BIN="$venv/bin/moto_server"
    if [[ -x "$MOTO_BIN" ]]; then return; fi
    command -v python3 >/dev/null 2>&1 || { echo "python3 is needed to install moto" >&2; return 1; }
    log "installing moto $MOTO_VERSION from PyPI into $venv"
    mkdir -p "$TOOLS_DIR"
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "python3 -m venv failed (is the venv module installed?)" >&2; return 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "moto[s3,sqs]==$MOTO_VERSION" flask flask-cors >"$TOOLS_DIR/moto-install.log" 2>&1 \
        || { cat "$TOOLS_DIR/moto-install.log" >&2; rm -rf "$venv"; return 1; }
    [[ -x "$MOTO_BIN" ]] || { echo "moto install did not provide $MOTO_BIN" >&2; return 1; }
}

# start_moto: an SQS + S3 emulator; exports AWS_ENDPOINT_URL and dummy credentials/region
# for the AWS SDK.
start_moto() {
    local port
    ensure_moto
    port=$(free_port)
    "$MOTO_BIN" -H 127.0.0.1 -p "$port" >"$SCRATCH/moto.log" 2>&1 &
    _PIDS+=($!)
    wait_for moto 60 curl -sf -o /dev/null "http://127.0.0.1:$port/moto-api/" \
        || { cat "$SCRATCH/moto.log" >&2; return 1; }
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    log "moto (SQS + S3) listening on $AWS_ENDPOINT_URL"
}

stop_services() {
    local pid
    for pid in "${_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    _PIDS=()
    stop_postgres
}
