"""Fixtures for the TLS target tests: Go programs built once per session with the
system Go (Debian golang-go, GOPROXY=off, stdlib only), and child processes that are
always reaped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .tls_helpers import GO_PLAIN_PROGRAM, GO_TLS_PROGRAM, find_go


@pytest.fixture(scope="session")
def go_builds(tmp_path_factory) -> dict[str, Path]:
    """{"normal", "stripped", "pie", "plain"} -> path of a built Go program."""
    go = find_go()
    if go is None:
        pytest.skip("Go toolchain not installed (Debian golang-go)")
    root = tmp_path_factory.mktemp("gobuild")
    env = dict(
        os.environ,
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        GO111MODULE="on",
    )
    out: dict[str, Path] = {}
    for name, src in (("tlsapp", GO_TLS_PROGRAM), ("plainapp", GO_PLAIN_PROGRAM)):
        d = root / name
        d.mkdir()
        (d / "main.go").write_text(src)
        (d / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.19\n")
    builds = {
        "normal": ("tlsapp", []),
        "stripped": ("tlsapp", ["-ldflags=-s -w"]),
        "pie": ("tlsapp", ["-buildmode=pie"]),
        "plain": ("plainapp", []),
    }
    for key, (src, flags) in builds.items():
        target = root / f"{key}.bin"
        subprocess.run(
            [go, "build", *flags, "-o", str(target), "."],
            cwd=root / src, env=env, check=True, capture_output=True, timeout=300,
        )
        out[key] = target
    return out


@pytest.fixture
def spawn():
    """Start processes that are killed and reaped at the end of the test."""
    procs: list[subprocess.Popen] = []

    def _spawn(argv, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("text", True)
        p = subprocess.Popen(argv, **kw)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
