"""Open N idle TCP connections on loopback and hold them: `idle_conns.py N`.

Listens on 127.0.0.1 (a free port), connects N clients to itself, accepts them all, prints
one JSON line {"pid", "port", "connections"} when every connection is established, then
holds them until stdin closes (or a signal). Raises RLIMIT_NOFILE for the 2·N descriptors
(up to the hard limit: a caller that needs more connections runs several of these).
"""
import json
import os
import resource
import socket
import sys


def main() -> None:
    n = int(sys.argv[1])
    need = 2 * n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    clients, accepted = [], []
    while len(clients) < n:
        batch = min(1000, n - len(clients))
        for _ in range(batch):
            c = socket.socket()
            c.connect(("127.0.0.1", port))
            clients.append(c)
        for _ in range(batch):
            a, _ = srv.accept()
            accepted.append(a)
    print(json.dumps({"pid": os.getpid(), "port": port, "connections": len(clients)}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
