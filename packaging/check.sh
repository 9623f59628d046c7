#!/usr/bin/env bash
# Builds the release artifacts (packaging/build.sh) and checks them the way
# an operator would use them: the static binaries (file, ldd, run; aarch64
# under qemu-aarch64-static), the .deb through dpkg -i / -r / -P on this
# machine, the OCI image under podman. Needs root; installs its tools.
#
# .ci/run runs it after ./test.sh. Cold, on 2 cores: cargo-deb 37 s, each
# musl release build about 100 s, the image seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)
# Debian has no aarch64 musl-gcc: its glibc cross compiler links, and
# Rust's musl target brings the C library.
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null 2>&1 || need_apt+=(qemu-user-static)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v file >/dev/null 2>&1 || need_apt+=(file)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if ((${#need_apt[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
# Pinned to the version the package was built and tested with.
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked --version 3.8.0

time packaging/build.sh
cargo test --manifest-path packaging/Cargo.toml
