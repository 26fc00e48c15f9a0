"""tap.filters: which processes are not traced, or traced with less.

A process's executable (the resolved `/proc/<pid>/exe` path, else the exec'd filename)
is matched against `tap.filters.custom` entries and the named `groups`. The result is a
bit set: the kernel bits (abi.PF_*) go into the `proc_filters` map so the kernel skips
the work; the same bits, plus the user-space ones, are applied again in user space, which
closes the short window between a process's exec and the map update.

`only` names what is skipped for a matching process; an empty `only` skips everything:
  data → connections and byte counts only, no payload (so no TLS facts, no HTTP)
  tls  → no TLS plaintext hooks: the connection is seen as ciphertext with its TLS facts
  http → payload is captured but not parsed as HTTP (no transactions)
  dns  → no DNS: its datagrams are not captured (so neither reported nor learned from)
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..bpf import abi

SKIP_ALL = abi.PF_SKIP_ALL
SKIP_DATA = abi.PF_SKIP_DATA
SKIP_TLS = abi.PF_SKIP_TLS
SKIP_HTTP = 1 << 8          # user space only
SKIP_DNS = abi.PF_SKIP_DNS
KERNEL_BITS = SKIP_ALL | SKIP_DATA | SKIP_TLS | SKIP_DNS

ONLY_BITS = {"data": SKIP_DATA, "tls": SKIP_TLS, "http": SKIP_HTTP, "dns": SKIP_DNS}

# Executable names (basenames) of each group: agents and infrastructure whose own traffic
# is noise for most users. A group skips its processes entirely, but only where the name
# sits in a directory those programs are installed in (GROUP_DIRS): a binary anyone
# copied to /tmp and named `kubelet` must not escape capture.
GROUPS: dict[str, frozenset[str]] = {
    "qpoint": frozenset({"qtap", "qpoint", "qpoint-agent", "qtap-agent", "plaintap"}),
    "container-runtimes": frozenset({
        "containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2",
        "dockerd", "docker-proxy", "runc", "crun", "crio", "conmon", "podman", "buildkitd",
    }),
    "kubernetes": frozenset({
        "kubelet", "kube-proxy", "flanneld", "calico-node", "cilium-agent", "cilium-operator",
        "kindnetd", "konnectivity-agent",
    }),
    "eks": frozenset({
        "aws-k8s-agent", "aws-node", "aws-vpc-cni", "amazon-ssm-agent", "ssm-agent-worker",
        "eks-pod-identity-agent",
    }),
    "gke": frozenset({
        "gke-metadata-server", "netd", "gcfsd", "gke-exec-auth-plugin", "fluent-bit-gke-exporter",
    }),
}


# Directories (as /proc/<pid>/exe shows them, i.e. inside the process's own root) where
# the programs of every group are installed: the system's binary directories, which only
# root can write on a normal host.
SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin", "/opt/bin")
# Where a group's programs live besides those (distribution or cloud specific); an entry
# ending in "/" is a prefix (versioned install directories).
GROUP_DIRS: dict[str, tuple[str, ...]] = {
    "qpoint": ("/app", "/opt/qpoint/bin"),
    "container-runtimes": ("/usr/libexec/podman", "/usr/libexec/docker", "/opt/containerd/bin"),
    "kubernetes": ("/home/kubernetes/bin", "/opt/cni/bin", "/var/lib/rancher/k3s/data/"),
    "eks": ("/app", "/snap/amazon-ssm-agent/"),
    "gke": ("/home/kubernetes/bin",),
}


def in_group_dir(exe: str, dirs: Iterable[str]) -> bool:
    """True when executable path `exe` sits directly in one of `dirs` (or anywhere under a
    "/"-terminated prefix)."""
    parent = os.path.dirname(exe)
    for d in dirs:
        if d.endswith("/"):
            if exe.startswith(d):
                return True
        elif parent == d:
            return True
    return False


def describe(flags: int) -> str:
    """Human words for a flag set, for logs: 'all', or e.g. 'data,tls'."""
    if flags & SKIP_ALL:
        return "all"
    return ",".join(name for name, bit in ONLY_BITS.items() if flags & bit) or "nothing"


class ProcessFilter:
    """Maps an executable path to its skip bits, per tap.filters."""

    def __init__(self, groups: Iterable[str] = (), custom: Iterable = ()) -> None:
        groups = list(groups)
        self.group_names: frozenset[str] = frozenset().union(*(GROUPS[g] for g in groups)) if groups else frozenset()
        # name -> directories it is skipped in (the system's plus its groups' own)
        self._group_dirs: dict[str, tuple[str, ...]] = {}
        for g in groups:
            for name in GROUPS[g]:
                self._group_dirs[name] = tuple(dict.fromkeys(
                    self._group_dirs.get(name, SYSTEM_BIN_DIRS) + GROUP_DIRS.get(g, ())))
        self.custom = list(custom)
        self._cache: dict[str, int] = {}

    @classmethod
    def from_config(cls, filters) -> ProcessFilter:
        return cls(filters.groups, filters.custom)

    @property
    def active(self) -> bool:
        return bool(self.group_names or self.custom)

    def flags_for(self, exe: str) -> int:
        if not exe or not self.active:
            return 0
        flags = self._cache.get(exe)
        if flags is None:
            flags = self._compute(exe)
            if len(self._cache) > 8192:
                self._cache.clear()
            self._cache[exe] = flags
        return flags

    def _compute(self, exe: str) -> int:
        dirs = self._group_dirs.get(os.path.basename(exe))
        if dirs is not None and in_group_dir(exe, dirs):
            return SKIP_ALL
        flags = 0
        for entry in self.custom:
            if entry.matches(exe):
                if entry.skips_everything:
                    return SKIP_ALL
                for what in entry.only:
                    flags |= ONLY_BITS[what]
        return flags
