"""Echo reflector for the lab's ``site`` namespace: answers ICMP/ICMPv6 echo
requests with configurable delay, jitter, random loss and a blackhole switch,
per interface. (This kernel has no netem; the kernel's own echo replies must
be off: ``--kernel-echo-off`` or ``disable_kernel_echo()`` does it for the
namespace it runs in.)

    python -m steerd.lab.reflector --interfaces gw-p1,gw-p2 --state-file /run/steerd-lab/<ns>/impair.json

State file (JSON, re-read whenever it changes, checked on every request;
write it atomically, e.g. with ``write_impairment``)::

    {"gw-p1": {"delay_ms": 30, "jitter_ms": 5, "loss_pct": 10, "blackhole": false}}

Missing file, interface or key = 0 / false. ``jitter_ms`` is the jitter a
prober will *measure* (RFC 3550 mean |RTT(i) - RTT(i-1)|): the added delay is
normal with sigma = jitter_ms * sqrt(pi) / 2 (E|X - Y| = 2 sigma / sqrt(pi) for
two independent draws), clipped at 0. So ``--delay 30ms --jitter 5ms`` shows
up in ``steerctl status`` as about 30 ms RTT and 5 ms jitter.

Replies leave through the interface the request came in on (raw socket bound
to it, source = the request's destination address via IP(V6)_PKTINFO), and
are timed by a scheduler thread (sub-millisecond, unlike an event loop's
millisecond-rounded timers).
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, fields

from steerd.probe import (
    ECHO_REPLY,
    ECHO_REQUEST,
    SO_TIMESTAMPNS,
    echo_packet,
    icmp_filter,
    kernel_timestamp_ns,
    raw_icmp_socket,
)

SIGMA_PER_JITTER = math.sqrt(math.pi) / 2
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)   # not in Python 3.11's socket module


@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    blackhole: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> Impairment:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (bool(v) if k == "blackhole" else float(v))
                      for k, v in d.items() if k in known})

    def delay(self, rng: random.Random) -> float | None:
        """Seconds to wait before replying, or None to drop the request."""
        if self.blackhole or (self.loss_pct > 0 and rng.random() * 100 < self.loss_pct):
            return None
        d = self.delay_ms
        if self.jitter_ms > 0:
            d = rng.gauss(d, self.jitter_ms * SIGMA_PER_JITTER)
        return max(0.0, d) / 1000


def read_state(path: str) -> dict[str, Impairment]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return {}
    return {str(k): Impairment.from_dict(v or {}) for k, v in raw.items()}


def write_impairment(path: str, interface: str, **changes: float | bool) -> dict[str, Impairment]:
    """Update one interface's impairment in the state file (atomic replace).
    ``write_impairment(p, "gw-p1", blackhole=True)``; keys as in Impairment."""
    import fcntl
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = {k: v.__dict__.copy() for k, v in read_state(path).items()}
        state.setdefault(interface, {}).update(changes)
        Impairment.from_dict(state[interface])          # validate before writing
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return {k: Impairment.from_dict(v) for k, v in state.items()}


def disable_kernel_echo() -> None:
    """Turn the kernel's echo replies off in the current network namespace."""
    for path in ("/proc/sys/net/ipv4/icmp_echo_ignore_all", "/proc/sys/net/ipv6/icmp/echo_ignore_all"):
        with open(path, "w") as f:
            f.write("1")


def realtime() -> None:
    """SCHED_FIFO for the calling thread, best effort: on a busy lab host a
    normal thread wakes milliseconds late, which would show up as RTT and
    jitter that nobody injected. Both threads block almost all the time."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        pass


class _Scheduler(threading.Thread):
    """Sends (socket, packet, ancillary) at a given monotonic time."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="reflector-tx")
        self._heap: list = []
        self._cv = threading.Condition()
        self._n = 0

    def at(self, when: float, sock: socket.socket, pkt: bytes, anc: list, addr: tuple) -> None:
        with self._cv:
            self._n += 1
            heapq.heappush(self._heap, (when, self._n, sock, pkt, anc, addr))
            self._cv.notify()

    rt = False      # SCHED_FIFO for this thread too

    def run(self) -> None:
        if self.rt:
            realtime()
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cv.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, sock, pkt, anc, addr = heapq.heappop(self._heap)
            try:
                sock.sendmsg([pkt], anc, 0, addr)
            except OSError as exc:
                print(f"reflector: send on {addr}: {exc}", file=sys.stderr)


class Reflector:
    def __init__(self, interfaces: list[str], state_file: str, seed: int | None = None):
        self.state_file = state_file
        self.rng = random.Random(seed)
        self.socks: dict[socket.socket, tuple[str, int, int]] = {}   # sock -> (ifname, ifindex, version)
        for ifname in interfaces:
            idx = socket.if_nametoindex(ifname)
            for version in (4, 6):
                s = raw_icmp_socket(version, ifname)
                s.setsockopt(*icmp_filter(version, ECHO_REQUEST[version]))
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                if version == 6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                self.socks[s] = (ifname, idx, version)
        self._state_key: tuple | None = None
        self.state: dict[str, Impairment] = {}
        self.counts = {i: {"requests": 0, "answered": 0, "dropped": 0} for i in interfaces}
        self.tx = _Scheduler()

    def _reload(self) -> None:
        try:
            st = os.stat(self.state_file)
            key: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._state_key:
            try:
                self.state = read_state(self.state_file)
                self._state_key = key
            except (ValueError, TypeError, OSError) as exc:   # half-written by hand: keep the last
                print(f"reflector: {self.state_file}: {exc}", file=sys.stderr)

    def handle(self, sock: socket.socket) -> None:
        ifname, idx, version = self.socks[sock]
        try:
            data, anc, _fl, addr = sock.recvmsg(65535, socket.CMSG_SPACE(20) + socket.CMSG_SPACE(16))
        except (BlockingIOError, InterruptedError):
            return
        # the delay counts from the kernel's arrival time, not from when we got to run
        now = time.monotonic()
        rx_ns = kernel_timestamp_ns(anc)
        if rx_ns is not None:
            now -= min(max(0, time.time_ns() - rx_ns), 50_000_000) / 1e9
        if version == 4:
            ihl = (data[0] & 0x0F) * 4
            local = data[16:20]
            icmp = data[ihl:]
        else:
            icmp = data
            local = next((d[:16] for lvl, kind, d in anc
                          if lvl == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO), None)
        if len(icmp) < 8 or icmp[0] != ECHO_REQUEST[version] or icmp[1] != 0:
            return
        self.counts[ifname]["requests"] += 1
        self._reload()
        delay = self.state.get(ifname, Impairment()).delay(self.rng)
        if delay is None:
            self.counts[ifname]["dropped"] += 1
            return
        ident, seq16 = struct.unpack("!HH", icmp[4:8])
        pkt = echo_packet(version, ECHO_REPLY[version], ident, seq16, icmp[8:])
        if version == 4:
            anc_out = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", idx, local, bytes(4)))]
        else:
            anc_out = [] if local is None else [
                (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16sI", local, idx))]
        self.counts[ifname]["answered"] += 1
        self.tx.at(now + delay, sock, pkt, anc_out, addr)

    def run(self, rt: bool = True) -> None:
        if rt:
            realtime()
            self.tx.rt = True
        self.tx.start()
        socks = list(self.socks)
        while True:
            ready, _, _ = select.select(socks, [], [], 1.0)
            for s in ready:
                try:
                    self.handle(s)
                except Exception as exc:  # noqa: BLE001 - one odd packet must not stop the lab
                    print(f"reflector: {self.socks[s][0]}: {exc!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m steerd.lab.reflector", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interfaces", required=True, help="comma-separated interfaces to answer on")
    ap.add_argument("--state-file", required=True, help="JSON impairment file (see above)")
    ap.add_argument("--seed", type=int, default=None, help="seed the loss/jitter generator")
    ap.add_argument("--no-realtime", action="store_true",
                    help="do not ask for SCHED_FIFO (timing then suffers on a busy host)")
    ap.add_argument("--kernel-echo-off", action="store_true",
                    help="set net.ipv4.icmp_echo_ignore_all=1 and net.ipv6.icmp.echo_ignore_all=1 here")
    a = ap.parse_args(argv)
    if a.kernel_echo_off:
        disable_kernel_echo()
    r = Reflector([i for i in a.interfaces.split(",") if i], a.state_file, a.seed)
    print(f"reflector ready on {a.interfaces}", flush=True)
    try:
        r.run(rt=not a.no_realtime)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
