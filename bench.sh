#!/usr/bin/env bash
# mtguard, HAProxy and nginx side by side on loopback, plus the core's
# criterion benchmarks; writes BENCHMARKS.md and benchmarks.svg.
#
#   ./bench.sh           the full form (about 10 minutes after the build)
#   ./bench.sh --quick   about two minutes after the build
#
# Installs haproxy and nginx (with its stream module) from Debian when they
# are missing (needs root), builds in release, and stops every process it
# started, also on failure or Ctrl-C: the driver runs in a process group of
# its own under a time limit, and that whole group is killed on exit.
set -euo pipefail
cd "$(dirname "$0")"

quick=()
criterion_args=()
limit=1500
case "${1:-}" in
    --quick)
        quick=(--quick)
        criterion_args=(--warm-up-time 0.5 --measurement-time 1)
        limit=600
        ;;
    "") ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
esac

need_apt=()
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
if ((${#need_apt[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # Debian's packages start their services where an init system runs
    # them; the benchmark starts its own instances and wants no others.
    for svc in haproxy nginx; do
        service "$svc" stop >/dev/null 2>&1 || true
    done
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p mtguard -p mtguard-tests --bin mtguard --bin mtguard-load --bin mtguard-bench

echo "== criterion: cargo bench -p mtguard-core" >&2
rm -rf "$CARGO_TARGET_DIR/criterion"
# Named benches only: the library's libtest harness would refuse criterion's
# options.
# --foreground: Ctrl-C reaches the benches (each one ends on its own).
timeout --foreground -k 10 "$limit" cargo bench -q -p mtguard-core \
    --bench admission --bench handshake --bench pins -- "${criterion_args[@]}" >&2

# Thousands of connections in flight: the flood, the guard and the backend
# each need far more descriptors than the usual 1024.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== load tests" >&2
# timeout makes itself the leader of a new process group and, at the limit,
# signals that whole group: the driver, the guards, nginx's workers, the
# backend and the load generator.
work=$(mktemp -d /tmp/mtguard-bench.XXXXXX)
timeout -k 10 "$limit" "$CARGO_TARGET_DIR/release/mtguard-bench" "${quick[@]}" \
    --criterion "$CARGO_TARGET_DIR/criterion" --out BENCHMARKS.md --svg benchmarks.svg \
    --work-dir "$work" &
pid=$!
trap 'kill -TERM -- -"$pid" 2>/dev/null || true; sleep 1; kill -KILL -- -"$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
wait "$pid"
