"""In-process TLS (memory BIOs): writes a boto3-shaped STS request head and its body N times,
so the enforcement probe classifies the same request repeatedly; prints microseconds per request.

Usage: decide_loop.py CERT KEY N"""
import ssl, time, sys
cert, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.load_verify_locations(cert)
ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
c = cctx.wrap_bio(ci, co, server_hostname="127.0.0.1"); s = sctx.wrap_bio(si, so, server_side=True)
for _ in range(10):
    for o in (c, s):
        try: o.do_handshake()
        except ssl.SSLWantReadError: pass
    d = co.read(); d and si.write(d); d = so.read(); d and ci.write(d)
body = b"Action=GetCallerIdentity&Version=2011-06-15"
head = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nAccept-Encoding: identity\r\n"
 b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
 b"User-Agent: Boto3/1.40.0 md/Botocore#1.40.0 ua/2.1 os/linux#6.18 md/arch#x86_64 lang/python#3.11.7 md/pyimpl#CPython m/Z,b,D cfg/retry-mode#legacy Botocore/1.40.0\r\n"
 b"X-Amz-Date: 20261125T225500Z\r\n"
 b"Authorization: AWS4-HMAC-SHA256 Credential=AKIAHOOPBENCH0000001/20261125/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=" + b"ab" * 32 + b"\r\n"
 b"amz-sdk-invocation-id: 8d7c0e3a-5b1f-4c2d-9e8f-0123456789ab\r\namz-sdk-request: attempt=1\r\n"
 b"Content-Length: %d\r\n\r\n" % len(body))
t = time.perf_counter()
for i in range(n):
    c.write(head); c.write(body); si.write(co.read()); s.read(8192)
dt = time.perf_counter() - t
print(f"{dt / n * 1e6:.2f} us per request (head + body write)")
