# The published js-ceramic anchor client, for the interop tests (services/cas/tests/interop.rs).
#
# Source this file and call ensure_interop_client: it installs the versions pinned in
# interop/package-lock.json into interop/node_modules with `npm ci` when they are missing or
# the lock file changed since the last install, and exports NODE_BIN. Works on its own or
# after scripts/lib/services.sh (it reuses its `log`).
#
# Notes:
# - @ceramicnetwork/core depends (through @ceramicnetwork/node-metrics) on `fs@0.0.1-security`,
#   which the registry no longer serves; package.json's `overrides` points `fs` at
#   interop/fs-shim, a local package that re-exports node's own `fs`.
# - Install scripts are not run (--ignore-scripts): nothing the tests use needs a native build
#   (classic-level ships prebuilt binaries; sqlite3 is never loaded).

INTEROP_DIR="${INTEROP_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
INTEROP_NODE_MIN_MAJOR=20 # @ceramicnetwork/core requires node >= 20.8

if ! declare -F log >/dev/null; then
    log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fi

_interop_node_ok() {
    local version major minor
    version=$("${NODE_BIN:-node}" --version 2>/dev/null) || return 1
    version=${version#v}
    major=${version%%.*}
    minor=${version#*.}; minor=${minor%%.*}
    ((major > INTEROP_NODE_MIN_MAJOR || (major == INTEROP_NODE_MIN_MAJOR && minor >= 8)))
}

# ensure_interop_client: exports NODE_BIN; installs interop/node_modules if needed.
ensure_interop_client() {
    NODE_BIN="${NODE_BIN:-$(command -v node || true)}"
    if [[ -z "$NODE_BIN" ]] || ! _interop_node_ok; then
        echo "node >= 20.8 is needed for the js-ceramic interop tests (found: ${NODE_BIN:-none})" >&2
        return 1
    fi
    export NODE_BIN
    local stamp="$INTEROP_DIR/node_modules/.cas-interop-lock"
    if [[ -f "$stamp" && -f "$INTEROP_DIR/node_modules/@ceramicnetwork/core/package.json" ]] \
        && cmp -s "$stamp" "$INTEROP_DIR/package-lock.json"; then
        return
    fi
    command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the js-ceramic interop client" >&2; return 1; }
    log "installing the js-ceramic client (pinned in interop/package-lock.json) into $INTEROP_DIR/node_modules"
    local logfile="$INTEROP_DIR/npm-install.log"
    if ! (cd "$INTEROP_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >"$logfile" 2>&1; then
        cat "$logfile" >&2
        return 1
    fi
    cp "$INTEROP_DIR/package-lock.json" "$stamp"
    rm -f "$logfile"
}
