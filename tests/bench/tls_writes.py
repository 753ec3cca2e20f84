"""Paced TLS writes through OpenSSL: a client writes WRITES small messages at RATE per second to
a TLS sink in the same process (the sink's reads are TLS calls too). Prints what it did.

Usage: tls_writes.py CERT KEY RATE SECONDS"""
import json
import socket
import ssl
import sys
import threading
import time

cert, key, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv_ctx.load_cert_chain(cert, key)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
port = listener.getsockname()[1]
reads = [0]


def sink():
    conn, _ = listener.accept()
    with srv_ctx.wrap_socket(conn, server_side=True) as s:
        while True:
            data = s.recv(65536)
            if not data:
                return
            reads[0] += 1


t = threading.Thread(target=sink)
t.start()
cli_ctx = ssl.create_default_context(cafile=cert)
sock = cli_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
msg = b"x" * 200
total = int(rate * seconds)
start = time.perf_counter()
for i in range(total):
    sock.sendall(msg)
    due = start + (i + 1) / rate
    while time.perf_counter() < due:
        pass
elapsed = time.perf_counter() - start
sock.close()
t.join()
print(json.dumps({"writes": total, "reads": reads[0], "seconds": elapsed, "rate": total / elapsed}))
