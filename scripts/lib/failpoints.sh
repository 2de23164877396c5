# Build what the fault harness runs: the `cas` binary with fault points (copied to
# target/debug/cas-failpoints, since a plain build of `cas` replaces target/debug/cas) and
# loadgen; export their paths for the tests. Source after scripts/lib/services.sh.
build_fault_harness() {
    local target="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
    log "building cas with fault points, and loadgen"
    cargo build --locked -p cas --features failpoints
    cp "$target/cas" "$target/cas-failpoints"
    cargo build --locked -p loadgen
    export CAS_FAILPOINTS_BIN="$target/cas-failpoints" CAS_LOADGEN_BIN="$target/loadgen"
}
