#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on any crash.
#   fuzz/run.sh            # 30 s per target (what CI runs)
#   fuzz/run.sh 600        # 10 minutes per target, for a longer local run
#   fuzz/run.sh 60 engine  # only the named targets
# Starts from the committed seeds in fuzz/corpus/<target>/ (never written
# to); inputs the run finds go to a temporary directory, a crashing input
# to fuzz/artifacts/<target>/, and the script prints how to replay it.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-30}"
shift || true

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# (whose rust-std ships the ASan runtime) accept them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets, so the per-target time is fuzzing time.
if (($#)); then
    for t in "${targets[@]}"; do cargo fuzz build -O "$t"; done
else
    cargo fuzz build -O
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${seconds}s"
    mkdir -p "$work/$t" "corpus/$t"
    if ! cargo fuzz run -O "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 40 "$work/$t.log"
        failed+=("$t")
    else
        grep -E "^stat::number_of_executed_units|^Done" "$work/$t.log" || true
    fi
done

if ((${#failed[@]})); then
    echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/; replay with" \
        "RUSTC_BOOTSTRAP=1 cargo fuzz run -O <target> <file>)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
