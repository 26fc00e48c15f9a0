"""A Python urllib HTTPS client for the TLS capture tests: POSTs a body with a token
header to 127.0.0.1 under a chosen host name (SNI), saves the response, prints JSON.
Name resolution of that one host is pinned to 127.0.0.1 inside this process only."""
import json
import os
import socket
import ssl
import sys
import time
import urllib.request

url, bodyfile, outfile, token = sys.argv[1:5]
delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
time.sleep(delay)
_real = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: _real("127.0.0.1" if host == "plaintap.test" else host, *a, **k)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
body = open(bodyfile, "rb").read()
req = urllib.request.Request(url, data=body, method="POST",
                             headers={"X-Token": token, "Content-Type": "application/octet-stream"})
with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
    data = r.read()
    status = r.status
open(outfile, "wb").write(data)
print(json.dumps({"pid": os.getpid(), "status": status}))
