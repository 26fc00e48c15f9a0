"""bpf/integrity.py: the start-up refusal to run code others could have changed."""
from __future__ import annotations

import os

import pytest

from plaintap.bpf import integrity
from plaintap.bpf.loader import PACKAGE_DIR


def tree(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "bpf" / "obj").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bpf" / "obj" / "capture.bpf.o").write_bytes(b"\x7fELF")
    for p in (tmp_path, pkg, pkg / "bpf", pkg / "bpf" / "obj"):
        os.chmod(p, 0o755)
    for p in (pkg / "__init__.py", pkg / "bpf" / "obj" / "capture.bpf.o"):
        os.chmod(p, 0o644)
    return pkg


def owners():
    st = os.stat("/")
    return {os.geteuid(), st.st_uid}


def test_a_clean_tree_passes(tmp_path):
    assert integrity.check_package(tree(tmp_path), owners()) >= 4


@pytest.mark.parametrize("rel,mode,word", [
    ("bpf/obj/capture.bpf.o", 0o664, "its group"),
    ("__init__.py", 0o646, "others"),
    ("bpf", 0o777, "others"),
])
def test_group_or_other_writable_entries_are_refused(tmp_path, rel, mode, word):
    pkg = tree(tmp_path)
    os.chmod(pkg / rel, mode)
    with pytest.raises(integrity.UnsafeInstall) as e:
        integrity.check_package(pkg, owners())
    msg = str(e.value)
    assert str(pkg / rel) in msg and word in msg and "chmod" in msg and "\n" not in msg


def test_a_writable_parent_directory_is_refused_unless_sticky(tmp_path):
    pkg = tree(tmp_path)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(integrity.UnsafeInstall, match=str(tmp_path)):
        integrity.check_package(pkg, owners())
    os.chmod(tmp_path, 0o1777)   # like /tmp: others cannot replace what they do not own
    integrity.check_package(pkg, owners())
    os.chmod(tmp_path, 0o755)


def test_a_file_owned_by_another_user_is_refused(tmp_path):
    pkg = tree(tmp_path)
    with pytest.raises(integrity.UnsafeInstall, match="owned by uid"):
        integrity.check_package(pkg, {12345})


def test_this_checkout_passes():
    """CI runs as root in a fresh clone with umask 022: the real package must pass."""
    integrity.check_package(PACKAGE_DIR)
