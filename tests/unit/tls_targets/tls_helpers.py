"""Helpers for the TLS target tests: real binaries built or found on this host, and
readers of a live process's maps and memory, so tests compare our file offsets with
what the kernel actually mapped."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
NODE = "/usr/bin/node"

GO_TLS_PROGRAM = """\
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sleep" {
		fmt.Println("ready")
		time.Sleep(30 * time.Second)
		return
	}
	resp, err := http.Get("https://127.0.0.1:1/")
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println(len(b))
}
"""

GO_PLAIN_PROGRAM = """\
package main

import "fmt"

func main() { fmt.Println("no tls here") }
"""


def find_go() -> str | None:
    return shutil.which("go") or ("/usr/bin/go" if os.path.exists("/usr/bin/go") else None)


def wait_for_mapping(pid: int, needle: str, timeout: float = 10.0) -> None:
    """Wait until `needle` appears in /proc/<pid>/maps (the process has loaded it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if needle in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{needle} never mapped in pid {pid}")


def wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 15.0) -> None:
    """Read the child's stdout until a line equal to `expected`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited before printing {expected!r}: rc={proc.poll()}")
        if line.strip() == expected:
            return
    raise AssertionError(f"child never printed {expected!r}")


def mapping_for_address(pid: int | str, address: int) -> tuple[int, int, int, str]:
    """(start, end, file offset, path) of the mapping of `pid` that contains `address`."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if start <= address < end:
            return start, end, int(parts[2], 16), parts[5] if len(parts) > 5 else ""
    raise AssertionError(f"{address:#x} not mapped in {pid}")


def load_bias(pid: int | str, ino: int, elf) -> int:
    """Load address minus link address of a position-independent file (inode `ino`, open
    as ElfImage `elf`) in `pid`: where its file offset 0 is mapped, minus the page of its
    first PT_LOAD's p_vaddr (which maps file offset 0)."""
    first = min(seg.vaddr for seg in elf.segments) & ~0xFFF
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) > 5 and int(parts[4]) == ino and int(parts[2], 16) == 0:
            return int(parts[0].split("-")[0], 16) - first
    raise AssertionError(f"inode {ino} not mapped at offset 0 in {pid}")


def read_memory(pid: int | str, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(size)


INT3 = 0xCC


def same_code(in_memory: bytes, in_file: bytes) -> bool:
    """Memory holds the file's instruction bytes, allowing the first byte to be an int3:
    a uprobe attached to this very function (by another tool, or plaintap's own e2e
    tests running meanwhile) shows as 0xCC in every process that maps the file."""
    return len(in_memory) == len(in_file) and in_memory[1:] == in_file[1:] and (
        in_memory[0] in (in_file[0], INT3)
    )


def read_file(path: str | os.PathLike, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


