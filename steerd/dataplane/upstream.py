"""Load ebpf/upstream.c on tc ingress of the tunnel interfaces and read it.

The counter tells the daemon, per tunnel, how many packets came up from the
site and when the latest one arrived (health.py makes a tunnel that went
silent a suspect). It has no forwarding role: a tunnel without it (interface
missing at start, program rejected) only falls back to probe timing, so
failures here are logged, never fatal. Nothing is pinned: the counts only
matter as differences within one daemon's life. The filter stays attached
when the daemon stops (like the classifier; a restart replaces it) and
`steerd --cleanup` removes it.
"""
from __future__ import annotations

import ctypes as ct
import logging
import socket

from ..abi import MAX_TUNNELS
from .program import _release_compiler_heap
from .sources import ebpf_dir
from .tc import UPSTREAM_NAME, UPSTREAM_PRIO, attach, detach as tc_detach

log = logging.getLogger("steerd.dataplane")

# (packets received so far, CLOCK_MONOTONIC seconds of the latest arrival or None):
# bpf_ktime_get_ns is the clock of time.monotonic()
Reading = tuple[int, float | None]


class UpstreamCounter:
    """The loaded counter, attached to *interfaces* (tunnel index = position)."""

    def __init__(self, interfaces: list[str], capacity: int = 0):
        from bcc import BPF  # late: unit tests and steerctl never need bcc

        # capacity: the most tunnels a reload may bring (hub mode: sites x 6)
        self.size = max(MAX_TUNNELS, len(interfaces), capacity)
        src = (ebpf_dir() / "upstream.c").read_text()
        self.bpf = BPF(text=src.encode(), cflags=[f"-DN_TUNNELS={self.size}"])
        self.fd: int = self.bpf.load_func("count_upstream", BPF.SCHED_CLS).fd
        _release_compiler_heap()
        self.table = self.bpf[b"upstream"]
        self.interfaces: list[str] = []
        self.set_interfaces(interfaces)

    def set_interfaces(self, interfaces: list[str]) -> None:
        """Count *interfaces* (tunnel i = interfaces[i]); detach from the ones dropped."""
        if len(interfaces) > self.size:
            raise ValueError(f"{len(interfaces)} tunnels, the upstream counter holds {self.size}")
        for ifname in set(self.interfaces) - set(interfaces):
            tc_detach(ifname, UPSTREAM_PRIO)
        index = self.bpf[b"tunnel_of"]
        index.clear()
        self.interfaces = list(interfaces)
        for i, ifname in enumerate(interfaces):
            try:
                index[ct.c_uint32(socket.if_nametoindex(ifname))] = ct.c_uint32(i)
                attach(ifname, self.fd, UPSTREAM_PRIO, UPSTREAM_NAME)
            except (OSError, LookupError) as exc:
                log.warning("no upstream counter on %s (probe timing only): %s", ifname, exc)
        # new indexes start from zero counts; differences across the switch are meaningless
        self.table[ct.c_uint32(0)] = self.table.Leaf()

    def read(self) -> list[Reading]:
        """Per tunnel: packets received, latest arrival. One map lookup."""
        cpus = self.table.getvalue(ct.c_uint32(0))
        out: list[Reading] = []
        for i in range(len(self.interfaces)):
            last = max(c.last_ns[i] for c in cpus)
            out.append((sum(c.packets[i] for c in cpus), last / 1e9 if last else None))
        return out

    def close(self) -> None:
        """Stop reading; the filter stays (see the module docstring)."""
        self.bpf.cleanup()


def detach(interfaces: list[str]) -> int:
    """Remove the counter from *interfaces*; returns how many filters were removed."""
    return sum(tc_detach(i, UPSTREAM_PRIO) for i in interfaces)
