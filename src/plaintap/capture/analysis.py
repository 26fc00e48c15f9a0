"""The agent's side of the TLS analysis workers (analysis_worker.py): asynchronous,
bounded, never waited on.

`AnalysisService.submit(fd, name, done)` queues one open file; `poll()` — called from
the capture loop between ring polls, it never blocks — sends queued files to idle
workers (a pool of `parallel` processes, one file at a time each) and calls
`done(reply)` for each reply: {"result": plain data} or {"refused": reason, "detail"}.
The caller keeps the descriptor open until then (it attaches through that same
descriptor) and closes it.

Workers are started on demand (fork+exec of `python -m plaintap.capture.analysis_worker`,
so the agent's threads are never forked) and replaced when they end: a file that takes
longer than `timeout_s` gets its worker killed ("timeout"); a worker that dies on a file
names the reason from its exit ("cpu_limit" for SIGXCPU, "crashed" for SIGBUS, SIGSEGV…,
"memory_limit"). Starting workers backs off when they keep failing to start. Files
owned by root go ahead of others; the queue is bounded ("queue_full").
"""
from __future__ import annotations

import heapq
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .analysis_worker import DEFAULT_LIMITS, EXIT_MEMORY, MAX_MESSAGE

log = logging.getLogger("plaintap.tls")

RESTART_BACKOFF_S = (0.5, 2.0, 10.0, 30.0)


@dataclass(order=True)
class _Queued:
    priority: tuple
    seq: int
    fd: int = field(compare=False)
    name: str = field(compare=False)
    done: Callable[[dict], None] = field(compare=False)
    queued_s: float = field(default=0.0, compare=False)


class _Worker:
    def __init__(self, proc: subprocess.Popen, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.job: _Queued | None = None
        self.sent_at = 0.0
        self.replied = False

    def reason_for_exit(self) -> str:
        try:
            rc = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if rc == EXIT_MEMORY:
            return "memory_limit"
        if rc < 0:
            return "cpu_limit" if -rc == signal.SIGXCPU else "crashed"
        return "crashed"


class AnalysisService:
    def __init__(self, limits: dict | None = None, max_queue: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.max_queue = max_queue
        self.clock = clock
        self._queue: list[_Queued] = []
        self._seq = 0
        self._workers: list[_Worker] = []
        self._start_failures = 0
        self._next_start = 0.0
        self.started = 0               # worker processes started (tests, logs)

    # ---- public ----

    @property
    def pending(self) -> int:
        return len(self._queue) + sum(1 for w in self._workers if w.job is not None)

    def sockets(self) -> list:
        """The sockets of workers busy with a file (readable when their reply is in)."""
        return [w.sock for w in self._workers if w.job is not None]

    def submit(self, fd: int, name: str, done: Callable[[dict], None], priority: int = 1) -> bool:
        """Queue `fd` (still the caller's) for analysis; False when the queue is full.
        Lower `priority` goes first, and within a priority smaller files (quicker)."""
        if len(self._queue) >= self.max_queue:
            return False
        self._seq += 1
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = 0
        heapq.heappush(self._queue, _Queued((priority, size), self._seq, fd, name, done, self.clock()))
        return True

    def poll(self) -> None:
        """Deliver replies that arrived, send what may be sent; never blocks."""
        for w in list(self._workers):
            self._receive(w)
        now = self.clock()
        timeout = float(self.limits["timeout_s"])
        for w in list(self._workers):
            if w.job is not None and now - w.sent_at > timeout:
                job = w.job
                w.job = None
                self._retire(w)
                self._deliver(job, {"refused": "timeout", "detail": f"{job.name}: analysis took longer than "
                                    f"{timeout:g}s"})
        while self._queue:
            w = self._idle_worker()
            if w is None:
                return
            job = heapq.heappop(self._queue)
            msg = json.dumps({"id": job.seq, "name": job.name}).encode()
            try:
                socket.send_fds(w.sock, [msg], [job.fd])
            except OSError as e:
                self._retire(w)
                self._deliver(job, {"refused": "worker_unavailable", "detail": f"{job.name}: {e}"})
                continue
            w.job, w.sent_at = job, self.clock()
            job.queued_s = w.sent_at - job.queued_s

    def wait_idle(self, timeout: float, idle: Callable[[], None] | None = None) -> bool:
        """Poll until nothing is queued or in flight (start-up, tests); True if idle.
        `idle()`, when given, is called between polls instead of waiting (the agent
        drains its ring buffer meanwhile) and must not block for long."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.poll()
            if idle is not None:
                idle()
            else:
                socks = [w.sock for w in self._workers if w.job is not None]
                if socks:
                    select.select(socks, [], [], 0.05)
                else:
                    time.sleep(0.01)
        return not self.pending

    def close(self) -> None:
        """Stop the workers; queued and in-flight jobs are refused ("worker_unavailable")."""
        for w in list(self._workers):
            job, w.job = w.job, None
            self._retire(w)
            if job is not None:
                self._deliver(job, {"refused": "worker_unavailable", "detail": f"{job.name}: agent stopping"})
        while self._queue:
            job = heapq.heappop(self._queue)
            self._deliver(job, {"refused": "worker_unavailable", "detail": f"{job.name}: agent stopping"})

    # ---- workers ----

    def _idle_worker(self) -> _Worker | None:
        for w in self._workers:
            if w.job is None:
                return w
        if len(self._workers) >= int(self.limits["parallel"]):
            return None
        return self._start_worker()

    def _start_worker(self) -> _Worker | None:
        now = self.clock()
        if now < self._next_start:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "plaintap.capture.analysis_worker", str(theirs.fileno()),
                 json.dumps(self.limits)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG", "LC_ALL")},
            )
        except OSError as e:
            ours.close()
            delay = RESTART_BACKOFF_S[min(self._start_failures, len(RESTART_BACKOFF_S) - 1)]
            self._start_failures += 1
            self._next_start = now + delay
            log.warning("cannot start a TLS analysis worker (%s); retrying in %.1fs", e, delay)
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        w = _Worker(proc, ours)
        self._workers.append(w)
        self.started += 1
        return w

    def _retire(self, w: _Worker) -> None:
        """Stop worker `w` (its job, if any, is the caller's to refuse)."""
        if w in self._workers:
            self._workers.remove(w)
        w.sock.close()
        if w.proc.poll() is None:
            w.proc.kill()
        try:
            w.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _receive(self, w: _Worker) -> None:
        try:
            data = w.sock.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:   # the worker ended: by itself (recycling), or on the file it had
            job, w.job = w.job, None
            if w in self._workers:
                self._workers.remove(w)
            w.sock.close()
            reason = w.reason_for_exit()
            if not w.replied:    # died before its first answer: do not respawn in a loop
                delay = RESTART_BACKOFF_S[min(self._start_failures, len(RESTART_BACKOFF_S) - 1)]
                self._start_failures += 1
                self._next_start = self.clock() + delay
            if job is not None:
                self._deliver(job, {"refused": reason, "detail": f"{job.name}: the analysis worker died "
                                    f"(exit {w.proc.returncode})"})
            return
        try:
            reply = json.loads(data)
            job_id = reply.pop("id")
        except (ValueError, KeyError, AttributeError, TypeError):
            reply, job_id = {"refused": "crashed", "detail": "unreadable reply from the analysis worker"}, None
        job = w.job
        if job is None or (job_id is not None and job_id != job.seq):
            log.warning("TLS analysis worker answered out of turn; replacing it")
            w.job = None
            self._retire(w)
            if job is not None:
                self._deliver(job, {"refused": "crashed", "detail": f"{job.name}: confused analysis worker"})
            return
        w.job = None
        w.replied = True
        self._start_failures = 0
        log.debug("analysed %s in %.0f ms (after %.0f ms in the queue)", job.name,
                  (self.clock() - w.sent_at) * 1000, job.queued_s * 1000)
        self._deliver(job, reply)

    def _deliver(self, job: _Queued, reply: dict) -> None:
        try:
            job.done(reply)
        except Exception:  # the caller's bug must not stop the service
            log.exception("handling the analysis of %s failed", job.name)
