"""Lab traffic: many UDP flows from core to the site, and a receiver at the site
that records, per flow, which tunnel interface each packet arrived on.

    python -m steerd.lab.traffic recv --port 5001 --out FILE      (site ns; SIGTERM to stop)
    python -m steerd.lab.traffic send --flows 3000 --dst 10.20.0.0/16 --port 5001 --duration 3
    python -m steerd.lab.traffic up --dev gw-p1 --dst 169.254.11.1 --pps 100 --duration 60 \
        [--on 0.2 --off 0.2]                                          (site ns: upstream traffic)

A flow is (source port, destination address): the sender spreads flows over
destination addresses of the range and a few source sockets; the payload
carries the flow id so the receiver needs no 5-tuple bookkeeping.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import select
import signal
import socket
import struct
import time
from collections import defaultdict

IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
SOCKETS = 50


def flow_targets(dst: str, flows: int) -> list[tuple[int, str]]:
    """(socket number, destination address) per flow id, deterministic."""
    net = ipaddress.ip_network(dst)
    base = int(net.network_address) + 1
    return [(i % SOCKETS, str(ipaddress.ip_address(base + i // SOCKETS * 7 + i % SOCKETS)))
            for i in range(flows)]


def send(dst: str, port: int, flows: int, duration: float, pps: float, first_flow: int = 0,
         clock: list[float] | None = None) -> int:
    """Send round-robin over the flows for *duration* seconds at ~*pps*. Returns
    packets sent; *clock* (if given) gets the seconds from the first to the last."""
    fam = socket.AF_INET6 if ipaddress.ip_network(dst).version == 6 else socket.AF_INET
    socks = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(SOCKETS)]
    targets = flow_targets(dst, flows)
    payloads = [json.dumps({"f": first_flow + i}).encode() for i in range(flows)]
    sent, start = 0, time.monotonic()
    gap = 1.0 / pps if pps > 0 else 0.0
    while True:
        for i, (s, addr) in enumerate(targets):
            try:
                socks[s].sendto(payloads[i], (addr, port))
                sent += 1
            except OSError:
                pass  # ENOBUFS/unreachable while the lab changes: the receiver tells
            if gap and sent % 64 == 0:
                ahead = start + sent * gap - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        if (now := time.monotonic()) - start >= duration:
            if clock is not None:
                clock.append(now - start)
            return sent


def send_up(dev: str, dst: str, pps: float, duration: float, on: float = 0.0,
            off: float = 0.0) -> int:
    """Paced UDP from the site up one tunnel (SO_BINDTODEVICE) to the discard
    port of the gateway's end: traffic the gateway sees arrive from the site.
    ``on``/``off`` > 0: bursts of *on* seconds with *off* seconds of silence."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    start = time.monotonic()
    sent, k, gap = 0, 0, 1.0 / pps
    while (t := start + k * gap) < start + duration:
        if on > 0 and (t - start) % (on + off) >= on:
            k += 1
            continue
        ahead = t - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        try:
            s.sendto(b"up", (dst, 9))
            sent += 1
        except OSError:
            pass  # the tunnel is being cut: the gateway's counters tell
        k += 1
    return sent


class Receiver:
    def __init__(self, port: int):
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.v4.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.v4.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.v4.bind(("0.0.0.0", port))
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.v6.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        self.v6.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.v6.bind(("::", port))
        # flow id -> interface name -> packets
        self.flows: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.names: dict[int, str] = {}
        # flow id -> interface -> CLOCK_MONOTONIC of the first packet there (shared
        # by all namespaces of the host, so benchmarks can time a failover)
        self.first: dict[int, dict[str, float]] = defaultdict(dict)

    def _ifname(self, idx: int) -> str:
        if idx not in self.names:
            self.names[idx] = socket.if_indextoname(idx)
        return self.names[idx]

    def drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(256, 64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            idx = 0
            for level, typ, val in anc:
                if (level, typ) == (socket.IPPROTO_IP, IP_PKTINFO):
                    idx = struct.unpack("i", val[0:4])[0]  # struct in_pktinfo: ifindex first
                elif (level, typ) == (socket.IPPROTO_IPV6, IPV6_PKTINFO):
                    idx = struct.unpack("I", val[16:20])[0]
            try:
                fid = json.loads(data)["f"]
            except (ValueError, KeyError):
                continue
            ifname = self._ifname(idx)
            if ifname not in self.flows[fid]:
                self.first[fid][ifname] = time.monotonic()
            self.flows[fid][ifname] += 1

    def reset(self) -> None:
        self.flows.clear()
        self.first.clear()

    def run(self, stop: list[bool]) -> None:
        while not stop[0]:
            ready, _, _ = select.select([self.v4, self.v6], [], [], 0.2)
            for s in ready:
                self.drain(s)

    def dump(self, path: str) -> None:
        with open(path + ".first", "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in self.first.items()}, f)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({str(k): dict(v) for k, v in self.flows.items()}, f)


def main() -> None:
    ap = argparse.ArgumentParser(prog="steerd.lab.traffic")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=5001)
    r.add_argument("--out", required=True)
    s = sub.add_parser("send")
    s.add_argument("--dst", default="10.20.0.0/16")
    s.add_argument("--port", type=int, default=5001)
    s.add_argument("--flows", type=int, default=3000)
    s.add_argument("--duration", type=float, default=3.0)
    s.add_argument("--pps", type=float, default=20000)
    s.add_argument("--first-flow", type=int, default=0)
    s.add_argument("--timed", action="store_true",
                   help="print the seconds from first to last packet after the count")
    u = sub.add_parser("up")
    u.add_argument("--dev", required=True)
    u.add_argument("--dst", required=True)
    u.add_argument("--pps", type=float, default=100)
    u.add_argument("--duration", type=float, default=60.0)
    u.add_argument("--on", type=float, default=0.0)
    u.add_argument("--off", type=float, default=0.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.cmd == "up":
        print(send_up(a.dev, a.dst, a.pps, a.duration, a.on, a.off))
        return
    if a.cmd == "send":
        clock: list[float] = []
        sent = send(a.dst, a.port, a.flows, a.duration, a.pps, a.first_flow, clock)
        print(f"{sent} {clock[0]:.6f}" if a.timed else sent)
        return
    rx = Receiver(a.port)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGUSR1, lambda *_: rx.dump(a.out))
    signal.signal(signal.SIGUSR2, lambda *_: rx.reset())
    print("ready", flush=True)
    rx.run(stop)
    rx.dump(a.out)


if __name__ == "__main__":
    main()
