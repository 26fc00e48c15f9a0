"""Bounded retry with exponential backoff for sinks, shared across batches, stoppable.

A sink's worker thread hands one batch at a time to `Retrier.run(attempt)`. An attempt
either succeeds, or raises `ExportFailed` saying what went wrong in one line and whether
trying again can help (a collector that is down: yes; a certificate that is not
trusted, a rejected API key: no).

The retry budget (`RetryPolicy.max_elapsed`, 60 s by default) is measured from the start
of the *outage*, not of the batch: while the backend stays down, the first batch waits
and retries for up to the budget, the batches queued behind it wait in the sink's
bounded queue, and once the outage is older than the budget every batch gets a single
attempt, so a backend that is gone for an hour costs one failed attempt per batch
instead of a one-minute stall per batch. The first success ends the outage. A backend
back within the budget therefore loses nothing. Waits end at once when the sink is shut
down (`stop` is set), and the batch then fails with its last error.

Pure apart from the injected clock and the stop event, so the policy is unit tested with
a fake clock.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


def short_reason(err: object, limit: int = 300) -> str:
    """An exporter's error text on one line, cut to `limit` characters, for log lines."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ExportFailed(Exception):
    """One attempt failed. `str(e)` is a one-line message for people.

    `retryable`: trying again later can help. `reset`: the sink should rebuild its client
    (channel, pinned certificate) before the next attempt.
    """

    def __init__(self, message: str, *, retryable: bool = True, reset: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.reset = reset


class SinkExportError(Exception):
    """A batch (or part of it) is given up. Raised from a sink's `export()`.

    `failed` records were not delivered; `delivered` records of the same batch were
    (when a batch was sent in several requests and a later one failed). `remaining`: the
    records not delivered, when they are not simply the last `failed` of the batch.
    `retryable`: trying again later can help (the backend is down, not refusing).
    """

    def __init__(self, message: str, *, failed: int, delivered: int = 0, retryable: bool = False,
                 remaining=None) -> None:
        super().__init__(message)
        self.failed = failed
        self.delivered = delivered
        self.retryable = retryable
        self.remaining = remaining


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 0.5        # first wait, seconds
    maximum: float = 5.0        # longest single wait (keeps a recovered backend noticed quickly)
    multiplier: float = 2.0
    jitter: float = 0.2         # each wait is multiplied by a random factor in [1-jitter, 1+jitter]
    max_elapsed: float = 60.0   # give up once the outage is this old (seconds); 0 = never retry

    def delay(self, retry_number: int, rand: Callable[[], float] = random.random) -> float:
        """Wait before retry `retry_number` (0-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** retry_number)
        return base * (1 - self.jitter + 2 * self.jitter * rand())


NO_RETRY = RetryPolicy(max_elapsed=0.0)


class Retrier:
    """Runs attempts under a `RetryPolicy`; one per sink, used from its worker thread."""

    def __init__(
        self,
        policy: RetryPolicy,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.stop = stop
        self.clock = clock
        self.rand = rand
        self.outage_since: float | None = None

    def run(
        self,
        attempt: Callable[[], T],
        on_retry: Callable[[ExportFailed, float], None] | None = None,
    ) -> T:
        """`attempt()`'s result; retries retryable failures within the budget.

        Raises the last `ExportFailed` when the failure is not retryable, the outage is
        older than the budget, or `stop` is set. `on_retry(error, wait)` is called before
        each wait.
        """
        retry_number = 0
        while True:
            try:
                result = attempt()
            except ExportFailed as err:
                now = self.clock()
                if self.outage_since is None:
                    self.outage_since = now
                if not err.retryable or self.stop.is_set():
                    raise
                wait = self.policy.delay(retry_number, self.rand)
                if now + wait > self.outage_since + self.policy.max_elapsed:
                    raise
                if on_retry is not None:
                    on_retry(err, wait)
                if self.stop.wait(wait):
                    raise
                retry_number += 1
            else:
                self.outage_since = None
                return result

    def outage_seconds(self) -> float:
        return 0.0 if self.outage_since is None else self.clock() - self.outage_since


def quiet_logger(name: str, capture: "ThreadCapture") -> None:
    """Route a third-party logger's records through `capture` (see ThreadCapture)."""
    logger = logging.getLogger(name)
    if capture not in logger.filters:
        # First, so that filters that drop repeats (the OTel SDK adds one) do not hide a
        # record from us.
        logger.filters.insert(0, capture)


class ThreadCapture(logging.Filter):
    """A logging filter that, on threads inside `with capture:`, keeps records and drops them.

    The OTLP exporters log each failure themselves (and again for every internal retry);
    inside a sink's export call those lines are captured for the sink's own one-line
    error and not printed. Other threads' records pass untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def __enter__(self) -> list[logging.LogRecord]:
        self._local.records = []
        return self._local.records

    def __exit__(self, *exc) -> None:
        self._local.records = None

    def filter(self, record: logging.LogRecord) -> bool:
        records = getattr(self._local, "records", None)
        if records is None:
            return True
        records.append(record)
        return False
