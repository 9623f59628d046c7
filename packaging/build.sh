#!/usr/bin/env bash
# Builds the release artifacts into target/packaging/: static binaries for
# x86_64 and aarch64 (musl), the Debian package and the OCI image. One
# release build per target serves them all (the .deb and the image carry
# the very x86_64 binary the tests run). Run again, it rebuilds only what
# changed. packaging/tests/packaging.rs checks what it produces; packaging/check.sh runs
# it first. Tools it needs: see `need` below (packaging/check.sh installs them).
#
#   packaging/build.sh [--no-aarch64] [--no-image]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

aarch64=1
image=1
for arg in "$@"; do
    case "$arg" in
    --no-aarch64) aarch64=0 ;;
    --no-image) image=0 ;;
    *) echo "usage: $0 [--no-aarch64] [--no-image]" >&2; exit 2 ;;
    esac
done

# Run from a cargo test (packaging/tests/packaging.rs), the environment carries
# the test crate's CARGO_PKG_NAME, CARGO_MANIFEST_DIR and the like. ring's
# build script asks to rerun when those change, and cargo compares them as
# its own environment has them, so every call from a test would rebuild
# everything from ring up. Cargo sets them itself for each crate it builds.
while read -r var; do
    case "$var" in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | OUT_DIR)
        unset "$var" ;;
    esac
done < <(compgen -e)

# Fixed, not configurable: the cargo-deb metadata names the packaged config
# by its path here.
dist="$root/target/packaging"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "no version in Cargo.toml's [workspace.package]" >&2; exit 1; }

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need musl-gcc "apt-get install musl-tools"
need file "apt-get install file"
((aarch64)) && need aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu"
((image)) && need buildah "apt-get install buildah"
cargo deb --version >/dev/null 2>&1 || missing+=("cargo-deb (cargo install cargo-deb --locked)")
installed_targets=$(rustup target list --installed 2>/dev/null || true)
for t in x86_64-unknown-linux-musl $( ((aarch64)) && echo aarch64-unknown-linux-musl); do
    grep -qx "$t" <<<"$installed_targets" || missing+=("the $t target (rustup target add $t)")
done
if ((${#missing[@]})); then
    printf 'packaging/build.sh: missing %s\n' "${missing[@]}" >&2
    echo "packaging/check.sh installs all of them." >&2
    exit 1
fi

mkdir -p "$dist"
step_name=
step() {
    step_end
    echo "== $1"
    step_name=$1
    step_start=$SECONDS
}
step_end() {
    if [ -n "$step_name" ]; then echo "   ($step_name: $((SECONDS - step_start)) s)"; fi
    step_name=
}

# Fails unless `file` calls the binary static (static-pie counts: it loads
# nothing either). ldd is not asked: on a static-pie it may run the binary.
check_static() {
    local what
    what=$(file -b "$1")
    case "$what" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "$1 is not static: $what" >&2; exit 1 ;;
    esac
}

# Moves FILE.new over FILE unless they are the same bytes, so an unchanged
# file keeps its time and what is built from it is not rebuilt.
update() {
    if cmp -s "$1.new" "$1"; then rm -f "$1.new"; else mv -f "$1.new" "$1"; fi
}

# Stages one target's binary, stripped, as mtguard-VERSION-TRIPLE/ plus a
# tarball holding it with the licenses, the example config and the unit.
stage_binary() {
    local triple=$1 strip=$2
    local built="$target_dir/$triple/release/mtguard"
    local name="mtguard-$version-$triple"
    check_static "$built"
    mkdir -p "$dist/$name"
    # Debug info out (54 MB to 11 MB), symbols kept: a panic's backtrace
    # still names its functions (fully stripped it would be 9 MB).
    "$strip" --strip-debug -o "$dist/$name/mtguard.new" "$built"
    update "$dist/$name/mtguard"
    cp README.md LICENSE-MIT LICENSE-APACHE runtime-std/dist/mtguard.example.toml \
        runtime-std/dist/mtguard.service runtime-std/dist/mtguard.nft \
        runtime-std/dist/mtguard-grafana.json runtime-std/dist/mtguard-alerts.yml "$dist/$name/"
    mkdir -p "$dist/$name/crowdsec"
    cp runtime-std/dist/crowdsec/*.yaml "$dist/$name/crowdsec/"
    # Fixed owners, order and times, so the same binary gives the same
    # tarball byte for byte.
    tar -C "$dist" --owner=0 --group=0 --numeric-owner --sort=name \
        --mtime="@${SOURCE_DATE_EPOCH:-0}" -cf - "$name" | gzip -9n >"$dist/$name.tar.gz"
}

step "static binary: x86_64-unknown-linux-musl"
# musl-gcc compiles ring's C and assembly against musl; rustc links with
# its own self-contained musl, so the result loads no shared library.
CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked -p mtguard --bin mtguard --target x86_64-unknown-linux-musl
stage_binary x86_64-unknown-linux-musl strip

if ((aarch64)); then
    step "static binary: aarch64-unknown-linux-musl"
    # Debian has no aarch64 musl-gcc; its glibc cross compiler does, since
    # ring's C needs no libc headers and rustc's self-contained musl
    # supplies the C library and start files at link time.
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
        AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
        cargo build --release --locked -p mtguard --bin mtguard --target aarch64-unknown-linux-musl
    stage_binary aarch64-unknown-linux-musl aarch64-linux-gnu-strip
fi

step "Debian package"
# The installed config is the example with the state directory set: the
# service's HOME gives no usable per-user default, and the unit's
# StateDirectory is /var/lib/mtguard.
mkdir -p "$dist/deb"
example=runtime-std/dist/mtguard.example.toml
state_line='#   dir = "/var/lib/mtguard"'
grep -qxF "$state_line" "$example" ||
    { echo "$example no longer has the line: $state_line" >&2; exit 1; }
{
    echo "# /etc/mtguard/mtguard.toml, installed by the mtguard package."
    echo "# The service is not enabled: set [server] listen and backend and"
    echo "# [mtproto] secrets below, run \`mtguard check-config\` on this file,"
    echo "# then \`systemctl enable --now mtguard\`. Upgrades keep your changes."
    echo "#"
    sed "s|^$state_line\$|dir = \"/var/lib/mtguard\"|" "$example"
} >"$dist/deb/mtguard.toml.new"
update "$dist/deb/mtguard.toml"
cp "$dist/mtguard-$version-x86_64-unknown-linux-musl/mtguard" "$dist/deb/mtguard.new"
update "$dist/deb/mtguard"
# Completions and manual pages come from the binary itself (its hidden
# `completions` and `man` commands), so they match its arguments; this
# machine runs the x86_64 build. Gzipped as Debian wants man pages, with
# no name or time in the header, so the same binary gives the same bytes.
mkdir -p "$dist/deb/completions" "$dist/deb/man"
for shell in bash zsh fish; do
    "$dist/deb/mtguard" completions "$shell" >"$dist/deb/completions/mtguard.$shell.new"
    update "$dist/deb/completions/mtguard.$shell"
done
rm -rf "$dist/deb/man.new"
"$dist/deb/mtguard" man --dir "$dist/deb/man.new"
for page in "$dist/deb/man.new"/*.1; do
    gzip -9n <"$page" >"$dist/deb/man/$(basename "$page").gz.new"
    update "$dist/deb/man/$(basename "$page").gz"
done
rm -rf "$dist/deb/man.new"
# cargo deb spends its time compressing (25 s here), so it runs only when
# something the package is made of is newer than the package.
deb="$dist/mtguard_$version-1_amd64.deb"
if [ ! -e "$deb" ] || [ -n "$(find "$dist/deb/mtguard" "$dist/deb/mtguard.toml" "$dist/deb/completions" "$dist/deb/man" Cargo.toml runtime-std/Cargo.toml \
    runtime-std/dist README.md docs LICENSE-MIT LICENSE-APACHE -newer "$deb" -print -quit)" ]; then
    rm -f "$dist"/mtguard_*.deb
    # Its two warnings about paths outside target/release/ are expected:
    # those assets are build.sh's, not cargo's, to make.
    cargo deb -p mtguard --target x86_64-unknown-linux-musl --no-build --output "$dist/"
else
    echo "   up to date: $deb"
fi

if ((image)); then
    # Rebuilt only when its inputs are newer than the archives: buildah's
    # vfs storage copies every layer, which costs seconds even for this.
    inputs=(Dockerfile .dockerignore runtime-std/dist/container.toml
        "$dist/mtguard-$version-x86_64-unknown-linux-musl/mtguard")
    arches=(amd64)
    if ((aarch64)); then
        arches+=(arm64)
        inputs+=("$dist/mtguard-$version-aarch64-unknown-linux-musl/mtguard")
    fi
    stale=0
    for arch in "${arches[@]}"; do
        out="$dist/mtguard-$version-oci-$arch.tar"
        [ -e "$out" ] || stale=1
        for input in "${inputs[@]}"; do
            [ -e "$out" ] && [ "$input" -nt "$out" ] && stale=1
        done
    done
    if ((stale)); then
        step "OCI image (buildah, vfs storage): ${arches[*]}"
        rm -rf "$dist/image"
        mkdir -p "$dist/image/empty" "$dist/image/state/mtguard"
        chmod 700 "$dist/image/state/mtguard"
        cp "$dist/mtguard-$version-x86_64-unknown-linux-musl/mtguard" "$dist/image/mtguard-amd64"
        ((aarch64)) && cp "$dist/mtguard-$version-aarch64-unknown-linux-musl/mtguard" "$dist/image/mtguard-arm64"
        # Storage of its own, thrown away after: nothing lands in (or
        # depends on) the machine's container storage.
        store=$(mktemp -d /var/tmp/mtguard-buildah.XXXXXX)
        trap 'rm -rf "$store"' EXIT
        bah=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
        for arch in "${arches[@]}"; do
            tag="localhost/mtguard:$version-$arch"
            "${bah[@]}" bud --quiet --platform "linux/$arch" -f Dockerfile \
                --timestamp 0 -t "$tag" .
            rm -f "$dist/mtguard-$version-oci-$arch.tar"
            "${bah[@]}" push --quiet "$tag" "oci-archive:$dist/mtguard-$version-oci-$arch.tar:mtguard:$version"
        done
        rm -rf "$store"
        trap - EXIT
    else
        echo "== OCI image: up to date"
    fi
fi
step_end

(cd "$dist" && sha256sum -- *.tar.gz *.deb $( ((image)) && echo mtguard-"$version"-oci-*.tar) >SHA256SUMS)
echo "== artifacts in $dist"
cat "$dist/SHA256SUMS"
