#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing, so it
# works on a fresh machine; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The server tests signal the guard process with /usr/bin/kill (procps).
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need_apt+=(procps)
# tests/tests/bench.rs runs the benchmark's HAProxy and nginx configs.
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
if ((${#need_apt[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

cargo test --workspace
