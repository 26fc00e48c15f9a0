"""tap.filters: matching executables, the bits they give, and how the tracker applies them."""
import pytest

from plaintap.bpf import abi
from plaintap.capture import filters
from plaintap.capture.process import ProcessTable
from plaintap.config import load_config_text

from .kernel_records import Plane, conn_close, conn_open, data


def pf(yaml_filters: str) -> filters.ProcessFilter:
    cfg = load_config_text(f"""
version: 2
services: {{event_stores: [{{type: stdout}}], object_stores: [{{type: stdout}}]}}
stacks: {{}}
tap:
  filters:
{yaml_filters}
""")
    return filters.ProcessFilter.from_config(cfg.tap.filters)


CUSTOM = """    custom:
      - exe: /usr/sbin/chronyd
      - exe: /usr/lib/systemd/
        strategy: prefix
      - exe: "^/opt/(agent|collector)-[0-9]+$"
        strategy: regex
        only: [data, tls]
      - exe: /bin/quiet
        strategy: suffix
        only: [http]
      - exe: ssl-only
        strategy: contains
        only: [tls]"""


@pytest.mark.parametrize("exe, flags", [
    ("/usr/sbin/chronyd", filters.SKIP_ALL),
    ("/usr/sbin/chronyd2", 0),
    ("/usr/lib/systemd/systemd-resolved", filters.SKIP_ALL),
    ("/opt/agent-12", filters.SKIP_DATA | filters.SKIP_TLS),
    ("/opt/agent-12x", 0),
    ("/usr/bin/quiet", filters.SKIP_HTTP),
    ("/srv/my-ssl-only-app", filters.SKIP_TLS),
    ("/usr/bin/curl", 0),
    ("", 0),
])
def test_custom_strategies_and_only(exe, flags):
    assert pf(CUSTOM).flags_for(exe) == flags


def test_groups_skip_by_executable_name_in_install_dirs_only():
    f = pf("    groups: [container-runtimes, kubernetes, eks]")
    assert f.flags_for("/usr/bin/containerd") == filters.SKIP_ALL
    assert f.flags_for("/usr/local/bin/kubelet") == filters.SKIP_ALL
    assert f.flags_for("/home/kubernetes/bin/kubelet") == filters.SKIP_ALL      # GKE's COS layout
    assert f.flags_for("/snap/amazon-ssm-agent/7993/amazon-ssm-agent") == filters.SKIP_ALL
    assert f.flags_for("/app/aws-k8s-agent") == filters.SKIP_ALL                # the aws-node image
    # The name alone is not enough: anyone can call a binary `kubelet`.
    assert f.flags_for("/tmp/kubelet") == 0
    assert f.flags_for("/home/eve/bin/containerd") == 0
    assert f.flags_for("/host/usr/local/bin/kubelet") == 0
    assert f.flags_for("/usr/bin/x/kubelet") == 0
    assert f.flags_for("/app/kubelet") == 0                 # /app is eks's directory, not kubernetes'
    assert f.flags_for("/usr/bin/containerd-helper") == 0
    assert f.flags_for("/usr/bin/qtap") == 0            # qpoint group not asked for


def test_no_filters_is_inactive_and_free():
    f = filters.ProcessFilter()
    assert not f.active and f.flags_for("/usr/sbin/chronyd") == 0


def test_describe():
    assert filters.describe(filters.SKIP_ALL | filters.SKIP_TLS) == "all"
    assert filters.describe(filters.SKIP_DATA | filters.SKIP_HTTP) == "data,http"


def test_kernel_bits_match_the_abi():
    assert (filters.SKIP_ALL, filters.SKIP_DATA, filters.SKIP_TLS, filters.SKIP_DNS) == (
        abi.PF_SKIP_ALL, abi.PF_SKIP_DATA, abi.PF_SKIP_TLS, abi.PF_SKIP_DNS)
    # DNS is skipped in the kernel (its datagrams are not copied); HTTP parsing is user space's
    assert filters.KERNEL_BITS & filters.SKIP_DNS
    assert not filters.KERNEL_BITS & filters.SKIP_HTTP


# ---- the process table tells the kernel; the tracker enforces in user space ----

class FakeProcs(ProcessTable):
    """ProcessTable over a fake /proc: exe paths by pid."""

    def __init__(self, exes, **kw):
        super().__init__(proc_root="/nonexistent", **kw)
        self.exes = exes

    def get(self, pid, comm="", uid=None):
        info = self._live.get(pid)
        if info is None:
            from plaintap.capture.process import ProcessInfo
            info = ProcessInfo(pid, exe=self.exes.get(pid, ""), comm=comm, uid=uid)
            self._live[pid] = info
            self._classify(info)
        return info


def test_exec_into_a_filtered_and_back_out_syncs_the_kernel():
    told = []
    f = pf(CUSTOM)
    procs = ProcessTable(proc_root="/nonexistent", flags_for=f.flags_for, on_flags=lambda p, fl: told.append((p, fl)))
    procs.on_exec(5, "/usr/sbin/chronyd", ["chronyd"], 0)
    procs.on_exec(5, "/usr/sbin/chronyd", ["chronyd"], 0)     # unchanged: not told twice
    procs.on_exec(5, "/usr/bin/curl", ["curl"], 0)            # exec'd away: cleared
    procs.on_exec(6, "/usr/bin/curl", ["curl"], 0)            # never filtered: nothing to say
    assert told == [(5, filters.SKIP_ALL), (5, 0)]


def test_data_plane_skips_filtered_processes_and_limits_the_others():
    f = pf(CUSTOM)
    procs = FakeProcs({1: "/usr/sbin/chronyd", 2: "/opt/agent-7", 3: "/srv/ssl-only", 4: "/usr/bin/curl"},
                      flags_for=f.flags_for)
    p = Plane(procs, dump=True)      # the dump output shows which streams reach the consumers
    for kid, pid in ((11, 1), (12, 2), (13, 3), (14, 4)):
        p.feed(conn_open(kid, 0, pid=pid),
               data(kid, 1, 0, b"\x16\x03\x01ciphertext", pid=pid),
               data(kid, 2, 0, b"GET / HTTP/1.1\r\n\r\n", source=abi.SRC_TLS, pid=pid),
               conn_close(kid, 3, pid=pid, sent=13))
    # chronyd: not reported, its kernel entry dropped, its later events not counted as orphans
    assert p.hooks.forgotten == [(1, 3)]
    assert p.stats["filtered_connections"] == 1 and p.stats["orphan_events"] == 0
    by_kid = {c.kid: (c.bytes_sent, c.tls_inspected) for c, part, fin in p.reports if fin}
    assert set(by_kid) == {12, 13, 14}
    fed = [(c.kid, src) for c, flow, src, pieces in p.pieces]
    # data-filtered: byte counts, no payload to consumers, not inspected
    assert by_kid[12] == (13, False) and not [k for k, _ in fed if k == 12]
    # tls-filtered: ciphertext flows, plaintext does not
    assert by_kid[13] == (13, False) and [s for k, s in fed if k == 13] == [abi.SRC_SOCKET]
    # unfiltered: both
    assert by_kid[14] == (13, True) and sorted(s for k, s in fed if k == 14) == [abi.SRC_SOCKET, abi.SRC_TLS]


def test_an_exec_handled_after_the_process_is_gone_keeps_what_proc_said(tmp_path):
    """An agent behind its ring: a connection read the process from /proc (resolved
    executable), the process exited, then its exec event is handled. The exec's filename
    (here a venv's symlink) must not replace the resolved path; a different image must."""
    proc = tmp_path / "proc" / "7"
    proc.mkdir(parents=True)
    (proc / "status").write_text("Name:\tpython3.11\nUid:\t0\t0\t0\t0\n")
    (proc / "cmdline").write_bytes(b"/venv/bin/python\0srv.py\0")
    (proc / "exe").symlink_to("/usr/lib/python3.11")
    procs = ProcessTable(proc_root=str(tmp_path / "proc"))
    assert procs.get(7).exe == "/usr/lib/python3.11"
    for f in ("status", "cmdline", "exe"):
        (proc / f).unlink()
    assert procs.on_exec(7, "/venv/bin/python", ["/venv/bin/python", "srv.py"], 0).exe == "/usr/lib/python3.11"
    assert procs.on_exec(7, "/usr/bin/curl", ["curl", "x"], 0).exe == "/usr/bin/curl"
