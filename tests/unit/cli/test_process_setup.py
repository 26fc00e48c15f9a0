"""instance.prepare_process: the agent's fd table is grown once, before its threads start
(no later fd waits out the RCU grace period of a table doubling), and transparent huge
pages are off (no first touch of allocator memory compacts memory)."""
import resource
import subprocess
import sys

PROBE = """
import os, resource, sys
from plaintap.instance import reserve_fd_table
if len(sys.argv) > 1:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if sys.argv[1] == "hard" else int(sys.argv[1]), hard))
def fdsize():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("FDSize:"))
before, open_before = fdsize(), sorted(os.listdir("/proc/self/fd"))
got = reserve_fd_table()
print(before, got, fdsize(), sorted(os.listdir("/proc/self/fd")) == open_before)
"""


def probe(*args: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_table_is_grown_and_no_fd_is_left_open():
    want = min(16384, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    before, got, after, same_fds = probe("hard")
    assert int(before) < want
    assert got == str(want) and int(after) >= want
    assert same_fds == "True"


def test_the_soft_fd_limit_caps_it():
    before, got, after, same_fds = probe("1000")
    assert got == "1000" and 1000 <= int(after) < 16384 and same_fds == "True"


def test_a_tiny_limit_reserves_nothing():
    _, got, _, same_fds = probe("40")
    assert got == "0" and same_fds == "True"


def test_huge_pages_are_off_for_the_process_and_its_children():
    code = ("from plaintap.instance import disable_huge_pages; import subprocess; "
            "before = open('/proc/self/status').read(); ok = disable_huge_pages(); "
            "after = open('/proc/self/status').read(); "
            "child = subprocess.run(['cat', '/proc/self/status'], capture_output=True, text=True).stdout; "
            "f = lambda s: next(ln.split()[1] for ln in s.splitlines() if ln.startswith('THP_enabled:')); "
            "print(ok, f(before), f(after), f(child))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "1", "0", "0"]
