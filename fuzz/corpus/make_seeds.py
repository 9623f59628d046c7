#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/) from the test
vectors and a few hand-made inputs. Rerun after changing an input layout:
    python3 fuzz/corpus/make_seeds.py
Needs only Python 3 and openssl (for the certificates of the DER target)."""
import hashlib
import ipaddress
import os
import shutil
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VECTORS = os.path.join(ROOT, "core", "tests", "vectors")


def target(name):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    # The seed- prefix is what .gitignore lets into git (new inputs a run
    # finds are not committed).
    return lambda file, data: open(os.path.join(d, "seed-" + file), "wb").write(
        data.encode() if isinstance(data, str) else data
    )


def vectors(file):
    for line in open(os.path.join(VECTORS, file)):
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        yield f[0], bytes.fromhex(f[-1])


# inspector: [clock u8][cuts u8][cut u16 LE]* bytes; clock 128 = the
# vectors' 1,800,000,000.
put = target("inspector")
picked = ["classic-abridged", "dd-padded", "wrong-secret", "valid-517", "valid-mlkem",
          "hmac-bit-flipped", "session-id-16",
          # obfuscated2 headers that start like a TLS record (16 03 01 xx)
          "tls-16030100-abridged", "tls-16030107-abridged", "tls-16030102-abridged",
          "tls-160301ff-wrong-secret"]
for file in ("obfuscated2.txt", "fake_tls.txt", "tls_prefix.txt"):
    for name, data in vectors(file):
        if name in picked:
            put(name, bytes([128, 0]) + data)
            put(name + "-split", bytes([128, 3]) + struct.pack("<3H", 5, 6, 60) + data)
put("http-probe", bytes([128, 0]) + b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")

# ja4: first records of real clients and fake-TLS hellos, raw, and one cut
# short.
put = target("ja4")
for name, data in vectors("ja4.txt"):
    if name in ("openssl-default", "openssl-tls12-no-sni", "curl-default", "python-ssl-alpn",
                "fake-tls-valid-mlkem"):
        put(name, data)
        if name == "openssl-default":
            put(name + "-cut", data[:100])

# der: real certificates of three key types, and a truncated one.
put = target("der")
with tempfile.TemporaryDirectory() as tmp:
    for name, args in [
        ("p256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("ed25519", ["-newkey", "ed25519"]),
        ("rsa1024", ["-newkey", "rsa:1024"]),
    ]:
        out = os.path.join(tmp, name + ".der")
        subprocess.run(
            ["openssl", "req", "-x509", *args, "-nodes", "-subj", "/CN=fuzz.example",
             "-days", "1", "-keyout", os.path.join(tmp, "key"), "-outform", "DER", "-out", out],
            check=True, capture_output=True)
        cert = open(out, "rb").read()
        put(name, cert)
        if name == "p256":
            put("p256-truncated", cert[: len(cert) // 2])

# pin_text: pins and pins-file lines.
put = target("pin_text")
put("spki", "sha256/80ver3wBLDVJzSNx2JoyWYG61dYYBGRXkgzjYRkQFGc=")
put("cert", "cert-sha256/" + "ab" * 32)
put("line-expires", "sha256/80ver3wBLDVJzSNx2JoyWYG61dYYBGRXkgzjYRkQFGc= expires=2027-01-01 # backup key")
put("comment", "# only a comment")
put("bad-base64", "sha256/80ver3wBLDVJzSNx2JoyWYG61dYYBGRXkgzjYRkQFG=")

# snapshot: format version 1 (README "Snapshots").
put = target("snapshot")


def mapped(v4):
    return int(ipaddress.IPv6Address("::ffff:" + v4)).to_bytes(16, "little")


def snapshot(clients=(), allow=(), deny=(), pins=()):
    body = b""
    for tag, records in ((1, clients), (2, allow), (3, deny), (4, pins)):
        body += bytes([tag]) + struct.pack("<I", len(records)) + b"".join(records)
    header = b"MTGS" + struct.pack("<HHII", 1, 0, len(body), 0)
    return header + body + hashlib.sha256(header + body).digest()


blocked = mapped("192.0.2.7") + bytes([0b1, 1]) + struct.pack("<Q", 300_000)
forever = mapped("192.0.2.8") + bytes([0b11 | (4 << 2), 0]) + struct.pack("<Q", 0)
net = mapped("198.51.100.0") + bytes([120])
pin = bytes([0]) + bytes(range(32)) + struct.pack("<Q", 0) + bytes([6]) + b"backup"
put("empty", snapshot())
put("blocks", snapshot(clients=[blocked, forever]))
put("lists", snapshot(allow=[net], deny=[net]))
put("pin", snapshot(pins=[pin]))
put("bad-checksum", snapshot(clients=[blocked])[:-1] + b"\0")

# config: the example config and small valid and invalid ones.
put = target("config")
put("example", open(os.path.join(ROOT, "runtime-std", "dist", "mtguard.example.toml")).read())
put("limits", 'level = 2\n[limits]\nmax_connections_per_ip = 5\nrate_window = "10s"\nhandshake_timeout = "off"\n')
put("lists", '[lists]\nallow = ["10.0.0.0/8", "2001:db8::/32"]\ndeny = ["192.0.2.7"]\n')
put("mtproto", '[mtproto]\nsecrets = ["ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d"]\non_probe = "mask"\nmask_backend = "www.example.com:443"\n')
put("typo", "[limits]\nmax_conections_per_ip = 5\n")
put("duration", "90s")

# engine and proxy_header take `arbitrary` input: any bytes decode, so a
# few different lengths and patterns are enough to start from.
put = target("engine")
put("zeros", bytes(64))
put("ramp", bytes(range(256)))
put("connects", bytes([1, 2, 3, 0, 0, 1, 2, 0]) + bytes([0, 1] * 40) + bytes([5, 0xff] * 10))
put = target("proxy_header")
put("v4-v4", bytes([0, 127, 0, 0, 1, 0x1f, 0x90, 0, 192, 0, 2, 1, 1, 187]))
put("v6-mapped", bytes([1]) + bytes(range(16)) + bytes([0, 80, 2, 10, 0, 0, 1, 0, 25]))
put("zeros", bytes(40))

# sntp_reply: 8 bytes of nonce, then the reply (a good one, a kiss-o'-death).
put = target("sntp_reply")
nonce = bytes(range(1, 9))
reply = bytearray(48)
reply[0] = (4 << 3) | 4
reply[1] = 2
reply[24:32] = nonce
for at in (16, 32, 40):
    reply[at:at + 8] = struct.pack(">II", 1_750_000_000 + 2_208_988_800, 0x80000000)
put("reply", nonce + bytes(reply))
kiss = bytearray(reply)
kiss[1] = 0
kiss[12:16] = b"RATE"
put("kiss", nonce + bytes(kiss))

# config_block's seeds are written by the host command itself (this script
# leaves them alone), so they follow the format with no second encoder:
#   mtguard appliance-config --config CONFIG --out fuzz/corpus/config_block/seed-static \
#       --address 192.168.1.20/24 --gateway 192.168.1.1 --backend 192.168.1.21:443 \
#       --ntp 192.168.1.1 --mac 02:00:6d:74:67:01
#   mtguard appliance-config --out fuzz/corpus/config_block/seed-dhcp --dhcp \
#       --backend 10.0.0.5:8443 --mac 02:00:6d:74:67:02
# (CONFIG: level 2, max_connections_per_ip 4, handshake_timeout "off", one
# secret of each kind.)
