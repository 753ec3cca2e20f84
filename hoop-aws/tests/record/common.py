"""Shared helpers for the fixture recorders: start moto, scrub and write requests."""
import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto(port):
    """moto_server on 127.0.0.1:port for the duration of the block (plain HTTP: what is
    recorded is the request the SDK builds, not the transport)."""
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


SIG = re.compile(r"Signature=[0-9a-fA-F]+")


def scrub_headers(headers):
    out = []
    for k, v in headers:
        if isinstance(v, bytes):
            v = v.decode("latin-1")
        lk = k.lower()
        if lk in ("x-amz-security-token",):
            continue
        if lk == "authorization":
            v = SIG.sub("Signature=REDACTED", v)
        out.append([k, v])
    return out


def scrub_target(target):
    target = re.sub(r"([?&](X-Amz-)?Signature=)[^&]+", r"\1REDACTED", target)
    return re.sub(r"&?X-Amz-Security-Token=[^&]*", "", target)


def record(sdk, method, url, headers, body, service, operation, note=""):
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    headers = list(headers)
    if not any(k.lower() == "host" for k, _ in headers):
        headers.insert(0, ("Host", parts.netloc))
    if body is None:
        body = b""
    if isinstance(body, str):
        body = body.encode()
    if hasattr(body, "read"):
        body = b""
    return {
        "sdk": sdk,
        "method": method,
        "target": scrub_target(target),
        "headers": scrub_headers(headers),
        "body_b64": base64.b64encode(bytes(body)).decode(),
        "service": service,
        "operation": operation,
        **({"note": note} if note else {}),
    }


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    print(f"{len(rows)} requests -> {path}", file=sys.stderr)
