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
  dns  → DNS is not reported (plaintap does not capture DNS yet: nothing to skip)
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..bpf import abi

SKIP_ALL = abi.PF_SKIP_ALL
SKIP_DATA = abi.PF_SKIP_DATA
SKIP_TLS = abi.PF_SKIP_TLS
SKIP_HTTP = 1 << 8          # user space only
SKIP_DNS = 1 << 9           # user space only (no DNS capture yet)
KERNEL_BITS = SKIP_ALL | SKIP_DATA | SKIP_TLS

ONLY_BITS = {"data": SKIP_DATA, "tls": SKIP_TLS, "http": SKIP_HTTP, "dns": SKIP_DNS}

# Executable names (basenames) of each group: agents and infrastructure whose own traffic
# is noise for most users. A group skips its processes entirely.
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


def describe(flags: int) -> str:
    """Human words for a flag set, for logs: 'all', or e.g. 'data,tls'."""
    if flags & SKIP_ALL:
        return "all"
    return ",".join(name for name, bit in ONLY_BITS.items() if flags & bit) or "nothing"


class ProcessFilter:
    """Maps an executable path to its skip bits, per tap.filters."""

    def __init__(self, groups: Iterable[str] = (), custom: Iterable = ()) -> None:
        self.group_names: frozenset[str] = frozenset().union(*(GROUPS[g] for g in groups)) if groups else frozenset()
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
        if os.path.basename(exe) in self.group_names:
            return SKIP_ALL
        flags = 0
        for entry in self.custom:
            if entry.matches(exe):
                if entry.skips_everything:
                    return SKIP_ALL
                for what in entry.only:
                    flags |= ONLY_BITS[what]
        return flags
