#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing, so it
# works on a fresh machine; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The server tests signal the guard process with /usr/bin/kill (procps).
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need_apt+=(procps)
# tests/tests/system.rs: systemd-analyze verifies the shipped units, groff
# renders the manual pages.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v groff >/dev/null 2>&1 || need_apt+=(groff-base)
# The nftables test builds a network namespace (iproute2) and loads the
# shipped ruleset with nft (nftables).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# The HSM tests (tests/tests/hsm.rs): SoftHSM2 as the token, OpenSC's
# pkcs11-tool as the independent look at what is stored in it.
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
# tests/tests/bench.rs runs the benchmark's HAProxy and nginx configs.
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
# tests/tests/prometheus.rs: a real Prometheus scrapes the guard, and
# promtool checks the metrics and the shipped alert rules. Its post-install
# script may try to start the service; the test starts its own.
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_apt+=(libnginx-mod-stream)
# runtime-embassy/tests/qemu.rs boots the mps2-an500 appliance image (built
# for thumbv7em-none-eabihf by the test itself) in QEMU, on a tap device...
command -v qemu-system-arm >/dev/null 2>&1 || need_apt+=(qemu-system-arm)
# ...and its DHCP option against dnsmasq in the test's namespace.
command -v dnsmasq >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
# tests/tests/quickstart.rs runs the real mtprotoproxy from PyPI (below).
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# tests/tests/status_page.rs drives the admin status page in headless
# Chromium over WebDriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# The CrowdSec test runs a real Local API from Debian's crowdsec package.
# Installing it would run its post-install script, which registers with the
# central API and fails offline; the package is extracted instead and the
# test starts its binaries with a config of its own.
crowdsec_dir="${MTGUARD_CROWDSEC_DIR:-/var/tmp/mtguard-crowdsec}"
if [ ! -x "$crowdsec_dir/root/usr/bin/crowdsec" ]; then
    mkdir -p "$crowdsec_dir"
    (cd "$crowdsec_dir" && { apt-get download crowdsec 2>/dev/null ||
        { apt-get update -qq && apt-get download crowdsec; }; } &&
        dpkg -x crowdsec_*.deb root)
fi

# The mtprotoproxy quick start's end-to-end test runs mtprotoproxy 1.0.6
# (and the pycryptodome it requires) from its own directory, outside any
# system or user site-packages.
mtprotoproxy_dir="${MTGUARD_MTPROTOPROXY_DIR:-/var/tmp/mtguard-mtprotoproxy}"
if [ ! -f "$mtprotoproxy_dir/bin/mtprotoproxy.py" ]; then
    python3 -m pip install -q --target "$mtprotoproxy_dir" mtprotoproxy==1.0.6
fi

rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf ||
    rustup target add thumbv7em-none-eabihf

cargo test --workspace
