# mtguard on an empty base: the static musl binary, a config that listens
# on all of the container's addresses, and nothing else (no shell, no libc,
# no /etc/passwd). packaging/build.sh stages the binaries under
# target/packaging/image/ and builds this with buildah; by hand:
#   packaging/build.sh --no-image
#   buildah bud --platform linux/amd64 -t mtguard .    # or docker build
# See docs/install.md for running it.
FROM scratch

# Set by buildah and BuildKit from --platform: amd64 or arm64.
ARG TARGETARCH

LABEL org.opencontainers.image.title="mtguard" \
      org.opencontainers.image.description="Security gateway for MTProto proxies" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY LICENSE-MIT LICENSE-APACHE /usr/share/doc/mtguard/
COPY target/packaging/image/mtguard-${TARGETARCH} /usr/bin/mtguard
COPY runtime-std/dist/container.toml /etc/mtguard/mtguard.toml
# The one directory the guard writes (state, admin token). The build has no
# shell to mkdir and chown with, so directories are copied in: /var/lib
# first, root's, since a COPY --chown also chowns the parents it creates;
# then into it the staged mtguard/ (mode 0700), the user's. A fresh named
# volume starts as a copy of it.
COPY target/packaging/image/empty/ /var/lib/
COPY --chown=10001:10001 target/packaging/image/state/ /var/lib/

# Numeric, since there is no /etc/passwd to look a name up in. Port 4443,
# not 443, so the guard needs no capability: publish it as 443.
USER 10001:10001
VOLUME ["/etc/mtguard", "/var/lib/mtguard"]
EXPOSE 4443/tcp
# The guard drains connections and saves its state on SIGTERM, which is
# what `podman stop` and `docker stop` send.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/mtguard"]
CMD ["run", "--config", "/etc/mtguard/mtguard.toml"]
