"""Load ebpf/upstream.c on tc ingress of the tunnel interfaces and read it.

The counter tells the daemon, per tunnel, how many packets came up from the
site and when the latest one arrived (health.py makes a tunnel that went
silent a suspect). It has no forwarding role: a tunnel without it (interface
missing, program rejected) only falls back to probe timing, so failures here
are logged, never fatal. Entries are keyed by tunnel id (site id x 6 +
position, like the classifier's), so a reload that adds a site leaves every
other tunnel's counts alone. The table is mapped into the daemon's memory:
reading it is a memory access, whatever the number of tunnels. Nothing is
pinned: the counts only matter as differences within one daemon's life. The
filter stays attached when the daemon stops (like the classifier; a restart
replaces it) and `steerd --cleanup` removes it.
"""
from __future__ import annotations

import ctypes as ct
import logging
import mmap
import socket
from array import array

from ..abi import MAX_TUNNELS
from .program import _release_compiler_heap
from .sources import ebpf_dir
from .tc import UPSTREAM_NAME, UPSTREAM_PRIO, detach as tc_detach
from .tcbatch import attach_all

log = logging.getLogger("steerd.dataplane")

# (packets received so far, CLOCK_MONOTONIC seconds of the latest arrival or None):
# bpf_ktime_get_ns is the clock of time.monotonic()
Reading = tuple[int, float | None]
ENTRY = 2          # u64 words per tunnel in the mapped table: packets, last_ns


class UpstreamCounter:
    """The loaded counter: *size* tunnel ids (the classifier's tunnel_ids)."""

    def __init__(self, size: int):
        from bcc import BPF  # late: unit tests and steerctl never need bcc

        self.size = max(MAX_TUNNELS, size)
        src = (ebpf_dir() / "upstream.c").read_text()
        self.bpf = BPF(text=src.encode(), cflags=[f"-DN_TUNNELS={self.size}"])
        self.fd: int = self.bpf.load_func("count_upstream", BPF.SCHED_CLS).fd
        _release_compiler_heap()
        self.table = self.bpf[b"upstream"]
        self.index = self.bpf[b"tunnel_of"]
        length = -(-self.size * ENTRY * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mm = mmap.mmap(self.table.map_fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
        self._words = memoryview(self._mm).cast("Q")
        self.counted: dict[int, tuple[str, int]] = {}   # tunnel id -> (interface, ifindex) counted

    def set_interfaces(self, tunnels: dict[int, str]) -> list[str]:
        """Count tunnel id -> interface name; stop counting the rest. Only what
        differs from the last call is written (a hub's reload touches only the
        tunnels it adds or moves), and an interface recreated since (a new
        ifindex) is taken up again. Returns the interfaces left uncounted."""
        bad = [t for t in tunnels if not 0 <= t < self.size]
        if bad:
            raise ValueError(f"tunnel ids {bad[:5]} beyond the upstream counter's {self.size}")
        want: dict[int, tuple[str, int]] = {}
        missing = []
        for tid, ifname in tunnels.items():
            try:
                want[tid] = (ifname, socket.if_nametoindex(ifname))
            except OSError:
                missing.append(ifname)
        stale = {tid: had for tid, had in self.counted.items() if want.get(tid) != had}
        for tid, (ifname, ifindex) in stale.items():
            self.index.pop(ct.c_uint32(ifindex), None)
            del self.counted[tid]
            if want.get(tid, ("",))[0] != ifname:
                # another tunnel (or none) from now on: its counts start from zero
                self.table[ct.c_uint32(tid)] = self.table.Leaf()
        kept = {name for name, _ in want.values()}
        for ifname in {name for name, _ in stale.values()} - kept:
            if tc_detach(ifname, UPSTREAM_PRIO):
                log.info("upstream counter removed from %s", ifname)
        new = {tid: had for tid, had in want.items() if tid not in self.counted}
        for tid, (_, ifindex) in new.items():
            self.index[ct.c_uint32(ifindex)] = ct.c_uint32(tid)
        refused = attach_all([ifindex for _, ifindex in new.values()], self.fd,
                             UPSTREAM_PRIO, UPSTREAM_NAME)
        for tid, (ifname, ifindex) in new.items():
            if ifindex in refused:
                self.index.pop(ct.c_uint32(ifindex), None)
                missing.append(ifname)
                log.warning("no upstream counter on %s (probe timing only): %s", ifname,
                            refused[ifindex])
            else:
                self.counted[tid] = (ifname, ifindex)
        if missing:
            log.warning("no upstream counter on %d interfaces (probe timing only until they "
                        "appear): %s", len(missing), ", ".join(sorted(missing)[:10]))
        return missing

    def packets(self, tids: list[int]) -> array:
        """Packets received so far by each of *tids* (a memory read)."""
        w = self._words
        return array("Q", [w[ENTRY * t] for t in tids])

    def read(self, tids: list[int]) -> list[Reading]:
        """Per tunnel id in *tids*: packets received, latest arrival."""
        w = self._words
        return [(w[ENTRY * t], (w[ENTRY * t + 1] / 1e9) or None) for t in tids]

    def close(self) -> None:
        """Stop reading; the filter stays (see the module docstring)."""
        self._words.release()
        self._mm.close()
        self.bpf.cleanup()


def detach(interfaces: list[str]) -> int:
    """Remove the counter from *interfaces*; returns how many filters were removed."""
    return sum(tc_detach(i, UPSTREAM_PRIO) for i in interfaces)
