#!/usr/bin/env python3
"""Test vectors for mtguard-core's MTProto handshake inspector.

    python3 -m venv /tmp/vecenv
    /tmp/vecenv/bin/pip install telethon==1.45.0 mtprotoproxy==1.0.6
    /tmp/vecenv/bin/python core/tests/vectors/generate.py

Writes obfuscated2.txt and fake_tls.txt beside this script. They are
committed, so `cargo test` needs no Python; rerun only to change them.

obfuscated2 headers come from Telethon's own MTProxy client code
(MTProxyIO.init_header), with os.urandom made deterministic so that reruns
give the same files. Telethon builds no fake-TLS ClientHello, and no package
on PyPI that we found does, so ClientHellos are built here from the
protocol (hmac, hashlib) without looking at the Rust code, and every one
that should be accepted, or refused for its HMAC, is first judged by
mtprotoproxy's own server-side check (handle_fake_tls_handshake), with its
clock set to the vector's time.

tls_prefix.txt holds obfuscated2 headers whose random part starts like a
TLS record (16 03 01 xx), still made by Telethon's init_header, which is fed
a random source with that prefix: real clients send these about 255 times
in 2^32 (they avoid only 16 03 01 02, as MTProxy decides "TLS" on those four
bytes). Their listener has an ee secret beside the obfuscated2 one.

Line format (space-separated; '#' starts a comment line):
    obfuscated2.txt: name listener-secret expected header-hex
    fake_tls.txt:    name listener-secret now-unix expected record-hex
    tls_prefix.txt:  name listener-secrets expected header-hex
                     (listener-secrets: comma-separated, in listener order)
expected is `abridged/DC`, `intermediate/DC`, `padded/DC` (obfuscated2),
`valid` (fake-TLS), the name of a refusal reason (mtguard's Invalid), or
`NeedMore` (not decided by these bytes: the handshake deadline refuses it).
"""

import asyncio
import hashlib
import hmac
import importlib.util
import os
import random
import struct
import sys
import types
from importlib.metadata import version
from pathlib import Path

from telethon.network.connection import tcpmtproxy
from telethon.network.connection.tcpabridged import AbridgedPacketCodec
from telethon.network.connection.tcpintermediate import (
    IntermediatePacketCodec,
    RandomizedIntermediatePacketCodec,
)

HERE = Path(__file__).resolve().parent
SECRET = bytes.fromhex("0123456789abcdef0123456789abcdef")


def load_mtprotoproxy():
    """mtprotoproxy installs a script, not a package: import the script."""
    path = Path(sys.executable).parent / "mtprotoproxy.py"
    spec = importlib.util.spec_from_file_location("mtprotoproxy", path)
    module = importlib.util.module_from_spec(spec)
    # Without arguments the script prints its usage and exits on import.
    argv, sys.argv = sys.argv, ["mtprotoproxy", "3256", SECRET.hex()]
    try:
        spec.loader.exec_module(module)  # defines functions; main() not run
    finally:
        sys.argv = argv
    return module


mtprotoproxy = load_mtprotoproxy()
OTHER = bytes.fromhex("fedcba9876543210fedcba9876543210")
DOMAIN = "www.example.com"
NOW = 1_800_000_000

rng = random.Random(20261129)


def det_urandom(n):
    return bytes(rng.getrandbits(8) for _ in range(n))


# Telethon draws the header from os.urandom; make it reproducible.
tcpmtproxy.os.urandom = det_urandom


def telethon_header(secret, codec, dc):
    header, _enc, _dec = tcpmtproxy.MTProxyIO.init_header(secret, dc, codec)
    assert len(header) == 64
    return bytes(header)


def obfuscated2_lines():
    abridged, inter, padded = (
        AbridgedPacketCodec,
        IntermediatePacketCodec,
        RandomizedIntermediatePacketCodec,
    )
    dd = b"\xdd" + SECRET
    cases = [
        ("classic-abridged", SECRET, SECRET, abridged, 2, "abridged/2"),
        ("classic-intermediate", SECRET, SECRET, inter, -4, "intermediate/-4"),
        ("classic-padded", SECRET, SECRET, padded, 5, "padded/5"),
        ("dd-padded", dd, dd, padded, 1, "padded/1"),
        ("dd-padded-media", dd, dd, padded, -2, "padded/-2"),
        ("wrong-secret", SECRET, OTHER, abridged, 2, "BadSecretOrTag"),
        ("wrong-secret-dd", dd, b"\xdd" + OTHER, padded, 2, "BadSecretOrTag"),
        # Telethon refuses to build this for a dd secret, so build it for the
        # same key as a classic secret and give the listener the dd form.
        ("dd-with-abridged", SECRET, dd, abridged, 2, "TagNotAllowed"),
        ("dd-with-intermediate", SECRET, dd, inter, 2, "TagNotAllowed"),
        ("dc-zero", SECRET, SECRET, abridged, 0, "BadDc"),
        ("dc-too-large", SECRET, SECRET, inter, 10003, "BadDc"),
    ]
    for name, client_secret, listener, codec, dc, expected in cases:
        header = telethon_header(client_secret, codec, dc)
        yield f"{name} {listener.hex()} {expected} {header.hex()}"


prefix_rng = random.Random(14)


def telethon_header_with_prefix(secret, codec, dc, prefix):
    """init_header with a random source whose first bytes are `prefix`: the
    header's first 56 bytes are that source's output, unencrypted."""
    def source(n):
        return prefix + bytes(prefix_rng.getrandbits(8)
                              for _ in range(n - len(prefix)))
    tcpmtproxy.os.urandom = source
    try:
        header = telethon_header(secret, codec, dc)
    finally:
        tcpmtproxy.os.urandom = det_urandom
    assert header.startswith(prefix), header.hex()
    return header


def tls_prefix_lines():
    abridged, inter, padded = (
        AbridgedPacketCodec,
        IntermediatePacketCodec,
        RandomizedIntermediatePacketCodec,
    )
    dd = b"\xdd" + SECRET
    ee = b"\xee" + SECRET + DOMAIN.encode()
    both = f"{SECRET.hex()},{ee.hex()}"
    tls_first = f"{ee.hex()},{SECRET.hex()}"
    with_dd = f"{ee.hex()},{dd.hex()}"
    p = bytes.fromhex
    cases = [
        # Valid headers: accepted as obfuscated2 once their 64 bytes are in,
        # whatever record length the TLS reading of them would claim.
        ("tls-16030100-abridged", SECRET, both, abridged, 2,
         p("16030100"), "abridged/2"),
        ("tls-1603013f-intermediate", SECRET, tls_first, inter, -4,
         p("1603013f"), "intermediate/-4"),
        ("tls-160301ff-padded-dd", dd, with_dd, padded, 1,
         p("160301ff"), "padded/1"),
        ("tls-16030107-abridged", SECRET, both, abridged, 3,
         p("16030107"), "abridged/3"),
        # 16 03 01 02 stays a TLS start, as in MTProxy: clients never send it.
        ("tls-16030102-abridged", SECRET, both, abridged, 2,
         p("16030102"), "NeedMore"),
        # Wrong secret: once the 64 bytes are no obfuscated2 header, the TLS
        # reading decides (too short a record, too long, or wait for it).
        ("tls-16030100-wrong-secret", OTHER, both, abridged, 2,
         p("16030100"), "MalformedHello"),
        ("tls-160301ff-wrong-secret", OTHER, both, abridged, 2,
         p("160301ff"), "OversizedHello"),
        ("tls-1603013f-wrong-secret", OTHER, both, abridged, 2,
         p("1603013f"), "NeedMore"),
    ]
    for name, client_secret, listener, codec, dc, prefix, expected in cases:
        header = telethon_header_with_prefix(client_secret, codec, dc, prefix)
        yield f"{name} {listener} {expected} {header.hex()}"


def u16(n):
    return struct.pack(">H", n)


def u24(n):
    return struct.pack(">I", n)[1:]


def ext(kind, data):
    return u16(kind) + u16(len(data)) + data


def sni(name):
    entry = b"\x00" + u16(len(name)) + name
    return ext(0, u16(len(entry)) + entry)


def client_hello(secret, ts, *, server_name=DOMAIN.encode(), session_len=32,
                 mlkem=False, pad_to=517):
    """One TLS record holding a ClientHello, random = HMAC | timestamp."""
    exts = b""
    if server_name is not None:
        exts += sni(server_name)
    exts += ext(0x002B, b"\x04\x03\x04\x03\x03")  # supported_versions
    exts += ext(0x000A, b"\x00\x04\x11\xec\x00\x1d")  # supported_groups
    shares = b""
    if mlkem:  # X25519MLKEM768: 1184 + 32 bytes, as current clients send
        shares += u16(0x11EC) + u16(1216) + det_urandom(1216)
    shares += u16(0x001D) + u16(32) + det_urandom(32)
    exts += ext(0x0033, u16(len(shares)) + shares)  # key_share
    suites = b"\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f"

    def record(exts):
        body = (b"\x03\x03" + bytes(32) + bytes([session_len])
                + det_urandom(session_len) + u16(len(suites)) + suites
                + b"\x01\x00" + u16(len(exts)) + exts)
        hs = b"\x01" + u24(len(body)) + body
        return b"\x16\x03\x01" + u16(len(hs)) + hs

    # RFC 7685 padding extension up to the target size, as clients do.
    short = len(record(exts + ext(0x0015, b"")))
    if short < pad_to:
        exts += ext(0x0015, bytes(pad_to - short))
    rec = record(exts)
    digest = hmac.new(secret, rec, hashlib.sha256).digest()
    stamp = bytes(a ^ b for a, b in zip(digest[28:], struct.pack("<I", ts)))
    return rec[:11] + digest[:28] + stamp + rec[43:]


def mtprotoproxy_accepts(record, secret, now):
    """mtprotoproxy's own server-side check of a fake-TLS ClientHello."""
    mtprotoproxy.config = types.SimpleNamespace(
        USERS={"u": secret.hex()}, REPLAY_CHECK_LEN=0)
    mtprotoproxy.used_handshakes.clear()
    mtprotoproxy.time = types.SimpleNamespace(time=lambda: now)

    class Writer:
        def write(self, _data):
            pass

        async def drain(self):
            pass

    result = asyncio.run(mtprotoproxy.handle_fake_tls_handshake(
        record, None, Writer(), ("192.0.2.1", 1)))
    return bool(result)


def fake_tls_lines():
    ee = b"\xee" + SECRET + DOMAIN.encode()
    ee_other = b"\xee" + OTHER + DOMAIN.encode()
    flipped = bytearray(client_hello(SECRET, NOW))
    flipped[200] ^= 0x01
    cases = [
        # name, listener, record, now, expected, mtprotoproxy must accept?
        ("valid-517", ee, client_hello(SECRET, NOW), NOW, "valid", True),
        ("valid-mlkem", ee, client_hello(SECRET, NOW, mlkem=True), NOW,
         "valid", True),
        ("valid-1800", ee, client_hello(SECRET, NOW, pad_to=1800), NOW,
         "valid", True),
        ("valid-sni-case", ee,
         client_hello(SECRET, NOW, server_name=DOMAIN.upper().encode()), NOW,
         "valid", True),
        ("ahead-3s", ee, client_hello(SECRET, NOW + 3), NOW, "valid", True),
        ("ahead-4s", ee, client_hello(SECRET, NOW + 4), NOW, "Timestamp",
         None),
        ("behind-120s", ee, client_hello(SECRET, NOW - 120), NOW, "valid",
         True),
        ("behind-121s", ee, client_hello(SECRET, NOW - 121), NOW,
         "Timestamp", None),
        ("wrong-sni", ee,
         client_hello(SECRET, NOW, server_name=b"www.example.org"), NOW,
         "WrongSni", True),
        ("no-sni", ee, client_hello(SECRET, NOW, server_name=None), NOW,
         "WrongSni", True),
        ("hmac-bit-flipped", ee, bytes(flipped), NOW, "HmacMismatch", False),
        ("wrong-secret", ee_other, client_hello(SECRET, NOW), NOW,
         "HmacMismatch", None),
        ("session-id-16", ee, client_hello(SECRET, NOW, session_len=16), NOW,
         "MalformedHello", None),
    ]
    for name, listener, record, now, expected, accepts in cases:
        if accepts is not None:
            got = mtprotoproxy_accepts(record, SECRET, now)
            assert got == accepts, (name, got)
        yield f"{name} {listener.hex()} {now} {expected} {record.hex()}"


def write(name, header, lines):
    path = HERE / name
    with open(path, "w") as f:
        f.write(header)
        for line in lines:
            f.write(line + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    py = sys.version.split()[0]
    write("obfuscated2.txt",
          f"# obfuscated2 first packets from Telethon {version('telethon')}"
          f" (MTProxyIO.init_header), Python {py}; by generate.py\n"
          "# name listener-secret expected header-hex\n",
          obfuscated2_lines())
    write("fake_tls.txt",
          "# fake-TLS ClientHellos built by generate.py (hmac, hashlib);"
          f" accepted/refused as marked by mtprotoproxy {version('mtprotoproxy')}"
          f" handle_fake_tls_handshake, Python {py}\n"
          "# name listener-secret now-unix expected record-hex\n",
          fake_tls_lines())
    write("tls_prefix.txt",
          f"# obfuscated2 first packets from Telethon {version('telethon')}"
          " (MTProxyIO.init_header) fed a random source that starts"
          f" 16 03 01 xx, Python {py}; by generate.py\n"
          "# name listener-secrets expected header-hex\n",
          tls_prefix_lines())
