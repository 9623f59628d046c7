#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing, so it
# works on a fresh machine; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The server tests signal the guard process with /usr/bin/kill (procps).
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need_apt+=(procps)
# The HSM tests (tests/tests/hsm.rs): SoftHSM2 as the token, OpenSC's
# pkcs11-tool as the independent look at what is stored in it.
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
# tests/tests/bench.rs runs the benchmark's HAProxy and nginx configs.
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
if ((${#need_apt[@]})); then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

cargo test --workspace
