"""The TLS analysis worker: reads untrusted ELF files in a sandbox, off the capture loop.

Run by the agent as `python -m plaintap.capture.analysis_worker SOCKFD LIMITS_JSON`
(see analysis.py, which keeps a small pool of them). At start it loads the analysers,
then sandboxes itself for good:

  * RLIMIT_AS (memory), RLIMIT_CPU (its whole life: it is recycled long before),
    RLIMIT_FSIZE 0, RLIMIT_CORE 0, RLIMIT_NOFILE small;
  * uid/gid 65534 with no supplementary groups, and no_new_privs: the files it reads
    arrive already open, so it needs no privilege at all.

Then it serves requests on the SOCK_SEQPACKET socket SOCKFD, one at a time: a small
JSON object {"id", "name"} carrying one open file descriptor (SCM_RIGHTS); the reply is
{"id", "result": plain data} or {"id", "refused": reason, "detail": text}
(tls_targets.analyze_image: bounded pread, capped sections, function counts, function
length and RETs per function). Only plain data goes back; the agent validates it.

What it cannot report itself the agent sees from outside: a request that outlives its
wall-clock limit is killed ("timeout"), a crash (SIGBUS, SIGSEGV…) or the CPU limit
(SIGXCPU) ends the process and the agent refuses that request accordingly and starts
another worker. After a MemoryError, or MAX_JOBS requests, the worker exits by itself
so the next request starts clean. It dies with the agent (PR_SET_PDEATHSIG) and exits
when the agent closes the socket.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
NOBODY = 65534
MAX_MESSAGE = 1 << 20
MAX_JOBS = 2000
# timeout_s: wall clock per file (enforced by the agent); cpu_s: the worker's whole
# life; as_bytes: address space; parallel: workers the agent runs.
DEFAULT_LIMITS = {"timeout_s": 10.0, "cpu_s": 600, "as_bytes": 1536 << 20, "parallel": 3}
EXIT_RECYCLE = 0
EXIT_MEMORY = 3

_libc = ctypes.CDLL(None, use_errno=True)


def sandbox(limits: dict) -> None:
    """Limit and unprivilege this process (irreversibly)."""
    cpu = int(limits.get("cpu_s", DEFAULT_LIMITS["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    as_bytes = int(limits.get("as_bytes", DEFAULT_LIMITS["as_bytes"]))
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    if os.geteuid() == 0:
        # Best effort: an agent run with a reduced capability set (no CAP_SETUID/SETGID,
        # e.g. the least-privilege container) or in a user namespace without 65534
        # mapped keeps its uid; the limits above and no_new_privs still apply.
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError:
            pass
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def analyze_fd(fd: int, name: str) -> dict:
    """{"result": plain data} or {"refused": reason, "detail": text} for one file."""
    from .elfsyms import ElfError, ElfImage
    from .gotls import GoBinaryError
    from .tls_targets import analyze_image

    try:
        with ElfImage(fd, name) as elf:
            return {"result": analyze_image(elf)}
    except (ElfError, GoBinaryError) as exc:
        return {"refused": getattr(exc, "reason", "malformed"), "detail": str(exc)[:300]}
    except MemoryError:
        return {"refused": "memory_limit", "detail": f"{name}: analysis needed more than its memory limit"}
    except RecursionError:
        return {"refused": "malformed", "detail": f"{name}: structures nest too deeply"}
    except OSError as exc:
        return {"refused": "read_failed", "detail": f"{name}: {exc.strerror}"}
    except Exception as exc:  # pyelftools and struct raise assorted errors on hostile input
        return {"refused": "malformed", "detail": f"{name}: {type(exc).__name__}: {exc}"[:300]}


def _encode(reply: dict) -> bytes:
    try:
        data = json.dumps(reply).encode()
    except (TypeError, ValueError):
        data = b""
    if not data or len(data) > MAX_MESSAGE:
        data = json.dumps({"id": reply.get("id"), "refused": "crashed", "detail": "unusable result"}).encode()
    return data


def serve(sock: socket.socket) -> int:
    """Answer requests until the agent hangs up; returns the exit status."""
    for _ in range(MAX_JOBS):
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
        except OSError:
            return EXIT_RECYCLE
        if not msg:
            return EXIT_RECYCLE
        try:
            req = json.loads(msg)
            job_id, name = req["id"], str(req.get("name", "?"))[:300]
        except (ValueError, KeyError, TypeError):
            for fd in fds:
                os.close(fd)
            continue
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            reply = {"refused": "crashed", "detail": f"{name}: no file descriptor received"}
        else:
            started = time.monotonic()
            try:
                reply = analyze_fd(fds[0], name)
            finally:
                os.close(fds[0])
            reply["worker_ms"] = round((time.monotonic() - started) * 1000, 2)   # for the agent's log
        reply["id"] = job_id
        sock.sendall(_encode(reply))
        if reply.get("refused") == "memory_limit":
            return EXIT_MEMORY
    return EXIT_RECYCLE


def main(argv: list[str]) -> int:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return EXIT_RECYCLE   # the agent is already gone
    sock = socket.socket(fileno=int(argv[1]))
    limits = json.loads(argv[2]) if len(argv) > 2 else {}
    # Load the analysers before the memory limit applies.
    import capstone  # noqa: F401
    import elftools.dwarf.dwarfinfo  # noqa: F401

    from . import tls_targets  # noqa: F401
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the agent decides when we stop
    sandbox(limits)
    return serve(sock)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
