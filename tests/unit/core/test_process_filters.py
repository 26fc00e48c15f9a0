"""tap.filters: matching executables, the bits they give, and how the tracker applies them."""
import pytest

from plaintap import metrics
from plaintap.bpf import abi
from plaintap.capture import filters
from plaintap.capture.decode import ConnClose, ConnOpen, Data
from plaintap.capture.process import ProcessTable
from plaintap.config import load_config_text
from plaintap.conn.tracker import ConnectionTracker


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
    assert (filters.SKIP_ALL, filters.SKIP_DATA, filters.SKIP_TLS) == (abi.PF_SKIP_ALL, abi.PF_SKIP_DATA, abi.PF_SKIP_TLS)
    assert not (filters.KERNEL_BITS & (filters.SKIP_HTTP | filters.SKIP_DNS))


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


def opened(kid, pid, fd=3):
    return ConnOpen(pid, 0, kid, pid, fd, 0, abi.ROLE_CLIENT, "egress-external", "10.0.0.1", 1000 + kid,
                    "1.1.1.1", 443, "x")


class Feed:
    def __init__(self):
        self.opened, self.data = [], []

    def on_open(self, conn):
        self.opened.append(conn.kid)

    def on_data(self, conn, flow, source, pieces, ts):
        self.data.append((conn.kid, source, b"".join(p for p in pieces if isinstance(p, bytes))))

    def on_close(self, conn):
        pass


def test_tracker_skips_filtered_processes_and_limits_the_others():
    f = pf(CUSTOM)
    procs = FakeProcs({1: "/usr/sbin/chronyd", 2: "/opt/agent-7", 3: "/srv/ssl-only", 4: "/usr/bin/curl"},
                      flags_for=f.flags_for)
    reports, forgotten, feed = [], [], Feed()
    t = ConnectionTracker(procs, lambda c, part, fin: reports.append((c.kid, fin, c.bytes_sent, c.tls_inspected)),
                          [feed], forget_kernel_entry=lambda p, fd: forgotten.append((p, fd)))
    orphans = metrics.orphan_events._value.get()
    filtered = metrics.filtered_connections._value.get()
    for kid, pid in ((11, 1), (12, 2), (13, 3), (14, 4)):
        t.handle(opened(kid, pid))
        t.handle(Data(pid, 1, kid, 0, abi.FLOW_SEND, abi.SRC_SOCKET, 3, b"\x16\x03\x01ciphertext"))
        t.handle(Data(pid, 2, kid, 0, abi.FLOW_SEND, abi.SRC_TLS, 3, b"GET / HTTP/1.1\r\n\r\n"))
        t.handle(ConnClose(pid, 3, kid, 13, 0, 3))
    # chronyd: not reported, its kernel entry dropped, its later events not counted as orphans
    assert forgotten == [(1, 3)] and 11 not in feed.opened
    assert metrics.filtered_connections._value.get() == filtered + 1
    assert metrics.orphan_events._value.get() == orphans
    by_kid = {k: (sent, insp) for k, fin, sent, insp in reports if fin}
    assert set(by_kid) == {12, 13, 14}
    # data-filtered: byte counts, no payload to consumers, not inspected
    assert by_kid[12] == (13, False) and not [d for d in feed.data if d[0] == 12]
    # tls-filtered: ciphertext flows, plaintext does not
    assert by_kid[13] == (13, False) and [s for k, s, _ in feed.data if k == 13] == [abi.SRC_SOCKET]
    # unfiltered: both
    assert by_kid[14] == (13, True) and sorted(s for k, s, _ in feed.data if k == 14) == [abi.SRC_SOCKET, abi.SRC_TLS]
