"""Where one thread of the agent loses time: off the CPU (with the kernel stack it slept in)
and on it (long syscalls, a fault the CPU spent milliseconds in). Tracepoints only (no
kprobes), so it runs on the kernels the agent supports.

    sudo .venv/bin/python scripts/trace_thread.py [--comm exec-lane] [--over-ms 0.5] -- COMMAND…

Runs COMMAND (a test, a benchmark) with these tracepoints on, then prints what the threads
named --comm did for longer than --over-ms:
  * off CPU: each time it blocked (sched_switch with a kernel stack trace, until its
    sched_wakeup), grouped by stack — e.g. `expand_files` → `synchronize_rcu` (an fd table
    doubling waited out an RCU grace period) or `register_for_each_vma` (a uprobe waited for
    a process's mmap lock);
  * on CPU: the gaps between its own consecutive events (syscall entry/exit, user page fault)
    with no switch in between — e.g. a `page_fault_user` followed by 4.9 ms (a huge-page
    fault compacting memory).
How the exec lane's 5 ms stalls were found (README, "The exec lane"). Uses
/sys/kernel/tracing (mounted by the agent); leaves the tracepoints off afterwards.
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

T = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_switch", "sched/sched_wakeup", "raw_syscalls/sys_enter", "raw_syscalls/sys_exit",
          "exceptions/page_fault_user")
LINE = re.compile(r"^\s*(\S+)-(\d+)\s+\[\d+\]\s+\S+\s+([0-9.]+): (\w+): (.*)$")


def write(path: str, value: str) -> None:
    (T / path).write_text(value + "\n")


def trigger(comm: str) -> str:
    return f'stacktrace if prev_comm == "{comm}" && prev_state != 0'


def setup(comm: str) -> None:
    write("tracing_on", "0")
    write("trace", "")
    write("buffer_size_kb", "32768")
    write("events/sched/sched_switch/filter", f'prev_comm == "{comm}" || next_comm == "{comm}"')
    write("events/sched/sched_switch/trigger", trigger(comm))
    write("events/sched/sched_wakeup/filter", f'comm == "{comm}"')
    for ev in EVENTS[2:]:
        write(f"events/{ev}/filter", f'comm == "{comm}"')
    for ev in EVENTS:
        write(f"events/{ev}/enable", "1")
    write("tracing_on", "1")


def teardown(comm: str) -> str:
    write("tracing_on", "0")
    text = (T / "trace").read_text(errors="replace")
    for ev in EVENTS:
        write(f"events/{ev}/enable", "0")
        write(f"events/{ev}/filter", "0")
    write("events/sched/sched_switch/trigger", "!" + trigger(comm))
    write("trace", "")
    write("tracing_on", "1")
    return text


def analyse(text: str, comm: str, over_ms: float) -> None:
    off: dict[str, list[float]] = collections.defaultdict(list)
    gaps: list[tuple[float, str, str]] = []
    asleep: dict[int, tuple[float, str]] = {}   # pid -> (since, stack)
    last: dict[int, tuple[float, str]] = {}     # pid -> (ts, event) of its last on-CPU event
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = LINE.match(lines[i])
        i += 1
        if not m:
            continue
        task, pid, ts, event, rest = m.group(1), int(m.group(2)), float(m.group(3)), m.group(4), m.group(5)
        if event == "sched_switch":
            prev = re.search(r"prev_comm=(.*?) prev_pid=(\d+) .*prev_state=(\S+)", rest)
            nxt = re.search(r"next_comm=(.*?) next_pid=(\d+)", rest)
            stack = []
            if i < len(lines) and "<stack trace>" in lines[i]:
                i += 1
                while i < len(lines) and lines[i].strip().startswith("=>"):
                    stack.append(lines[i].strip()[3:].split("+")[0])
                    i += 1
            if prev and prev.group(1) == comm:
                p = int(prev.group(2))
                last.pop(p, None)
                if prev.group(3) not in ("R", "R+"):
                    frames = [f for f in stack if not f.startswith(("trace_event", "__traceiter", "__schedule",
                                                                       "schedule"))]
                    asleep[p] = (ts, " < ".join(frames[:7]))
            if nxt and nxt.group(1) == comm:
                last[int(nxt.group(2))] = (ts, "switched in")
        elif event == "sched_wakeup":
            p = int(re.search(r"pid=(\d+)", rest).group(1))
            if p in asleep:
                since, stack = asleep.pop(p)
                if (ts - since) * 1e3 > over_ms and "poll" not in stack and "futex_wait" not in stack:
                    off[stack].append((ts - since) * 1e3)
        elif task == comm or task.startswith(comm[:15]):
            if pid in last and (ts - last[pid][0]) * 1e3 > over_ms:
                gaps.append(((ts - last[pid][0]) * 1e3, last[pid][1], f"{event}: {rest}"[:100]))
            last[pid] = (ts, f"{event}: {rest}"[:100])
    print(f"off CPU over {over_ms} ms (waits for work — poll, futex — left out):")
    for stack, v in sorted(off.items(), key=lambda kv: -max(kv[1])) or [("", [])]:
        if v:
            print(f"  {len(v):4d}× max {max(v):6.2f} ms  total {sum(v):7.1f} ms  {stack}")
    if not off:
        print("  none")
    print(f"on CPU, gaps over {over_ms} ms between its own events:")
    for ms, before, after in sorted(gaps, reverse=True)[:20]:
        print(f"  {ms:6.2f} ms after  {before}\n            before {after}")
    if not gaps:
        print("  none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comm", default="exec-lane", help="thread name (comm) to follow")
    ap.add_argument("--over-ms", type=float, default=0.5)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command to run after --")
    if not (T / "trace").exists():
        print(f"trace_thread: {T} is not mounted: mount -t tracefs nodev {T}", file=sys.stderr)
        return 2
    setup(args.comm)
    try:
        rc = subprocess.call(cmd)
    finally:
        text = teardown(args.comm)
    analyse(text, args.comm, args.over_ms)
    return rc


if __name__ == "__main__":
    sys.exit(main())
