"""Reply on the arrival tunnel: ebpf/arrival.h's recorder on the tunnels' ingress.

Attached to the tunnels of the sites with `reply_on_arrival_tunnel: true` only
(tunnel id by interface in the program's `arrival_tunnel` table), detached from
every other tunnel: a site without the option costs nothing anywhere.
"""
from __future__ import annotations

import ctypes as ct
import logging
import socket

from .tc import ARRIVAL_NAME, ARRIVAL_PRIO, attach, detach as tc_detach

log = logging.getLogger("steerd.dataplane")


def sync(prog, wanted: dict[int, str], present: set[str]) -> set[str]:
    """Make the recorder sit on exactly the *wanted* tunnels (tunnel id ->
    interface). *present*: interfaces it is on now. Returns where it is on."""
    table = prog.table("arrival_tunnel")
    index = {}
    for tid, ifname in wanted.items():
        try:
            index[socket.if_nametoindex(ifname)] = tid
        except OSError as exc:
            log.error("no reply on the arrival tunnel through %s: %s", ifname, exc)
    for k in [k.value for k in table.keys() if k.value not in index]:
        del table[ct.c_uint32(k)]
    for ifindex, tid in index.items():
        table[ct.c_uint32(ifindex)] = ct.c_uint32(tid)
    on = set()
    for ifname in sorted(set(wanted.values())):
        try:
            attach(ifname, prog.arrival_fd, ARRIVAL_PRIO, ARRIVAL_NAME)
            on.add(ifname)
        except (OSError, LookupError) as exc:
            log.error("no reply on the arrival tunnel through %s: %s", ifname, exc)
    for ifname in sorted(present - on):
        tc_detach(ifname, ARRIVAL_PRIO)
    return on


def detach(interfaces: list[str]) -> int:
    """Remove the recorder from *interfaces* (cleanup); how many filters were removed."""
    return sum(tc_detach(i, ARRIVAL_PRIO) for i in interfaces)
