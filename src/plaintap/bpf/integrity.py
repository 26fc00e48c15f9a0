"""Refuse to run code or BPF objects that someone other than root could have changed.

The agent runs as root and loads its own Python code, its native core and its BPF
objects from the package directory. If a non-root user can write any of them (or any
directory on the way to them, which lets them swap a file by renaming), that user can
run code as root through the agent. `check_package()` walks the package (without
following symlinks) and the directories above it, and raises `UnsafeInstall` with one
line naming the first problem and the fix.

Allowed: owned by root (or by the user running the agent, who is root in practice), no
write bit for group or others — except on ancestor directories with the sticky bit
(/tmp), where other users cannot replace entries they do not own.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_ENTRIES = 20000   # a package tree is a few hundred entries; bound the walk anyway


class UnsafeInstall(RuntimeError):
    """Code or BPF objects of the agent are writable by users other than root."""


def _problem(st: os.stat_result, owners: set[int], ancestor: bool) -> str | None:
    if st.st_uid not in owners:
        return f"owned by uid {st.st_uid}"
    if stat.S_ISLNK(st.st_mode):
        return None   # a link's own mode means nothing; who may change it is its directory's business
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if ancestor and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
            return None
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_package(package_dir: str | os.PathLike, owners: set[int] | None = None) -> int:
    """Raise UnsafeInstall when the package tree or a directory above it may be changed
    by a user not in `owners` (default: root and the current effective user). Returns
    the number of entries checked."""
    owners = owners if owners is not None else {0, os.geteuid()}
    root = Path(os.path.abspath(package_dir))
    checked = 0
    for anc in [root, *root.parents][1:]:
        st = os.lstat(anc)
        why = _problem(st, owners, ancestor=True)
        if why:
            raise UnsafeInstall(_message(anc, why))
        checked += 1
    stack = [str(root)]
    while stack:
        d = stack.pop()
        st = os.lstat(d)
        why = _problem(st, owners, ancestor=False)
        if why:
            raise UnsafeInstall(_message(d, why))
        checked += 1
        with os.scandir(d) as it:
            for e in it:
                if checked > MAX_ENTRIES:
                    return checked
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                    continue
                est = e.stat(follow_symlinks=False)
                why = _problem(est, owners, ancestor=False)
                if why:
                    raise UnsafeInstall(_message(Path(e.path), why))
                checked += 1
    return checked


def _message(path, why: str) -> str:
    return (f"refusing to run: {path} is {why}, so a non-root user could change code the agent runs as root; "
            f"make it root-owned and not group/other-writable (e.g. `chown -R root: {path} && chmod -R go-w {path}`)")
