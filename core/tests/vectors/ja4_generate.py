#!/usr/bin/env python3
"""JA4 vectors for mtguard-core's fingerprinting (core/src/ja4.rs).

    python3 -m venv /tmp/ja4env
    /tmp/ja4env/bin/pip install ja4plus==1.4.0
    /tmp/ja4env/bin/python core/tests/vectors/ja4_generate.py

Writes ja4.txt beside this script; it is committed, so `cargo test` needs
no Python. Rerun only to change it (the records change with every run, as
clients pick new randoms and key shares; their fingerprints do not).

The first TLS record of real clients is captured by a loopback listener
that reads one record and hangs up: `openssl s_client` (several option
sets), curl (OpenSSL underneath), wget (GnuTLS underneath, where Debian
builds it so) and Python's own `ssl` module. The fake-TLS hellos of
fake_tls.txt (built like the Telegram clients' by generate.py) are added as
they are. The expected JA4 of each is computed by ja4plus from PyPI, an
implementation of FoxIO's specification written independently of this
project (its `parse_tls_handshake` and `generate_ja4`), never by the Rust
code under test.

Line format (space-separated; '#' starts a comment line):
    name expected-ja4 record-hex
"""

import shutil
import socket
import ssl
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

from ja4plus.fingerprinters.ja4 import generate_ja4
from ja4plus.utils.tls_utils import parse_tls_handshake

HERE = Path(__file__).resolve().parent
DOMAIN = "www.example.com"


def capture(run_client):
    """The first TLS record a client sends to a fresh loopback listener."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(20)
    port = server.getsockname()[1]
    got = {}

    def accept():
        conn, _ = server.accept()
        conn.settimeout(10)
        data = b""
        while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        got["record"] = data[: 5 + int.from_bytes(data[3:5], "big")]
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    run_client(port)
    t.join()
    server.close()
    record = got["record"]
    assert record[0] == 0x16 and record[5] == 1, record[:6].hex()
    return record


def command(*argv):
    def run(port):
        args = [a.replace("PORT", str(port)) for a in argv]
        subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=20, check=False)
    return run


def python_ssl(server_hostname, alpn=None):
    def run(port):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname=server_hostname):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the listener hangs up after the hello
    return run


def clients():
    o = "openssl"
    at = "127.0.0.1:PORT"
    yield "openssl-default", command(o, "s_client", "-connect", at, "-servername", DOMAIN)
    yield "openssl-alpn", command(o, "s_client", "-connect", at, "-servername", DOMAIN,
                                  "-alpn", "h2,http/1.1")
    yield "openssl-tls12-no-sni", command(o, "s_client", "-connect", at, "-tls1_2",
                                          "-noservername")
    yield "openssl-tls12-all-ciphers", command(o, "s_client", "-connect", at, "-tls1_2",
                                               "-servername", DOMAIN, "-cipher", "ALL")
    yield "openssl-tls13-one-suite", command(o, "s_client", "-connect", at, "-tls1_3",
                                             "-servername", DOMAIN,
                                             "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    resolve = f"{DOMAIN}:PORT:127.0.0.1"
    url = f"https://{DOMAIN}:PORT/"
    yield "curl-default", command("curl", "-sk", "--max-time", "10", "--resolve", resolve, url)
    yield "curl-http1.1", command("curl", "-sk", "--http1.1", "--max-time", "10",
                                  "--resolve", resolve, url)
    yield "curl-ip", command("curl", "-sk", "--max-time", "10", "https://127.0.0.1:PORT/")
    if shutil.which("wget"):
        yield "wget", command("wget", "-q", "-O", "/dev/null", "--tries=1", "--timeout=10",
                              "--no-check-certificate", "https://127.0.0.1:PORT/")
    yield "python-ssl", python_ssl(DOMAIN)
    yield "python-ssl-alpn", python_ssl(DOMAIN, ["h2", "http/1.1"])
    yield "python-ssl-ip", python_ssl(None)


def expected(record):
    info = parse_tls_handshake(record)
    ja4 = generate_ja4(info)
    assert ja4 and len(ja4) == 36, (ja4, record[:16].hex())
    return ja4


def fake_tls_records():
    """The fake-TLS hellos of fake_tls.txt that are whole ClientHellos."""
    for line in (HERE / "fake_tls.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _secret, _now, _expected, hexed = line.split(" ")
        if name in ("valid-517", "valid-mlkem", "valid-1800", "valid-sni-case", "no-sni"):
            yield f"fake-tls-{name}", bytes.fromhex(hexed)


def tool_version(*argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError):
        return "absent"


def main():
    lines = []
    for name, run in clients():
        record = capture(run)
        lines.append(f"{name} {expected(record)} {record.hex()}")
        print(lines[-1][:60], file=sys.stderr)
    for name, record in fake_tls_records():
        lines.append(f"{name} {expected(record)} {record.hex()}")
    header = [
        "# JA4 vectors: written by ja4_generate.py, do not edit.",
        f"# expected JA4 by ja4plus {version('ja4plus')} (PyPI)",
        f"# {tool_version('openssl', 'version')}; {tool_version('curl', '--version')}",
        f"# {tool_version('wget', '--version')}; Python ssl: {ssl.OPENSSL_VERSION}",
        "# name expected-ja4 record-hex",
    ]
    (HERE / "ja4.txt").write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
