"""One large TLS write each way, for the capture tests: `server` answers a 1 MiB random
upload with a 1 MiB random download, each done as one sendall (one SSL_write call);
`client` does the reverse. Both print the digests of what they sent and received."""
import hashlib
import json
import os
import socket
import ssl
import sys

SIZE = 1 << 20


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            break
        buf += b
    return bytes(buf)


def main():
    role = sys.argv[1]
    if role == "server":
        cert, key = sys.argv[2], sys.argv[3]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ls = socket.create_server(("127.0.0.1", 0))
        print(f"ready {ls.getsockname()[1]}", flush=True)
        c, _ = ls.accept()
        with ctx.wrap_socket(c, server_side=True) as t:
            got = recv_exact(t, SIZE)
            out = os.urandom(SIZE)
            t.sendall(out)
            t.recv(1)
        print(json.dumps({"pid": os.getpid(), "recv": hashlib.sha256(got).hexdigest(),
                          "sent": hashlib.sha256(out).hexdigest()}), flush=True)
    else:
        port = int(sys.argv[2])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port)) as c, ctx.wrap_socket(c, server_hostname="bulk.test") as t:
            out = os.urandom(SIZE)
            t.sendall(out)
            got = recv_exact(t, SIZE)
        print(json.dumps({"pid": os.getpid(), "recv": hashlib.sha256(got).hexdigest(),
                          "sent": hashlib.sha256(out).hexdigest()}), flush=True)


main()
