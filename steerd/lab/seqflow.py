"""Sequenced UDP flows for the duplication tests and bench: what a voice call
looks like to the network (50 packets/s of 172 bytes: a G.711 frame in RTP),
counted at the site as unique packets delivered and copies per tunnel.

    python -m steerd.lab.seqflow recv --port 5004            (site ns; prints JSON at SIGTERM)
    python -m steerd.lab.seqflow send --to 10.20.5.1 --to 10.20.6.1 --port 5004 \\
        --pps 50 --duration 30                              (core ns; one flow per --to)
    python -m steerd.lab.seqflow echo --port 7                (core ns: answers every datagram)
    python -m steerd.lab.seqflow open --src 10.20.200.0/24 --flows 40 --to 10.99.0.2 --port 7
        (site ns: flows opened from the site, one per source address; prints where the
        replies arrived, per flow)

and a random dropper for the data path (netem is not in this kernel): nftables
in the site namespace drops a share of what arrives through one tunnel for
given destinations only, so the probes (and the link state) are untouched.
"""
from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time
from collections import defaultdict

import subprocess

from .netns import ns_popen, ns_sh
from .topology import Lab

IP_PKTINFO = 8
PAYLOAD = 172            # RTP header + 20 ms of G.711
HEADER = struct.Struct("!II")   # flow, sequence number
DROP_TABLE = "steerd_lab_seqdrop"


def send(targets: list[str], port: int, pps: float, duration: float) -> dict[int, int]:
    """One flow per target address, each at *pps*, paced together. Returns packets per flow."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in targets]
    pad = bytes(PAYLOAD - HEADER.size)
    start, k = time.monotonic(), 0
    n = int(duration * pps)
    for k in range(n):
        ahead = start + k / pps - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        for f, (s, dst) in enumerate(zip(socks, targets)):
            try:
                s.sendto(HEADER.pack(f, k) + pad, (dst, port))
            except OSError:
                pass   # counted as lost by the receiver
    return {f: n for f in range(len(targets))}


class SeqReceiver:
    """Per flow: the sequence numbers seen, and packets/bytes per arrival interface."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("0.0.0.0", port))
        self.seen: dict[int, set[int]] = defaultdict(set)
        self.packets: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.bytes: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.names: dict[int, str] = {}

    def drain(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, 64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if len(data) < HEADER.size:
                continue
            flow, seq = HEADER.unpack_from(data)
            idx = next((struct.unpack("i", v[:4])[0] for lvl, typ, v in anc
                        if (lvl, typ) == (socket.IPPROTO_IP, IP_PKTINFO)), 0)
            if idx not in self.names:
                self.names[idx] = socket.if_indextoname(idx) if idx else "?"
            ifname = self.names[idx]
            self.seen[flow].add(seq)
            self.packets[flow][ifname] += 1
            self.bytes[flow][ifname] += len(data) + 28    # + IPv4 and UDP headers

    def report(self) -> dict:
        return {str(f): {"unique": len(self.seen[f]), "packets": dict(self.packets[f]),
                         "bytes": dict(self.bytes[f])} for f in sorted(self.seen)}


def echo(port: int) -> None:
    """Answer every datagram to its sender (until killed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def open_flows(src: str, flows: int, dst: str, port: int, count: int, gap: float) -> dict[int, dict[str, int]]:
    """Flows opened from the site: flow i from the i-th address of *src*, *count*
    datagrams each; returns per flow the interfaces its replies arrived on."""
    import ipaddress
    base = int(ipaddress.ip_network(src).network_address) + 1
    socks = []
    for i in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.bind((str(ipaddress.ip_address(base + i)), 0))
        socks.append(s)
    got: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    names: dict[int, str] = {}
    for k in range(count):
        for i, s in enumerate(socks):
            s.sendto(HEADER.pack(i, k), (dst, port))
        deadline = time.monotonic() + gap
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(socks, [], [], left)
            for s in ready:
                data, anc, _, _ = s.recvmsg(2048, 64)
                idx = next((struct.unpack("i", v[:4])[0] for lvl, typ, v in anc
                            if (lvl, typ) == (socket.IPPROTO_IP, IP_PKTINFO)), 0)
                if idx not in names:
                    names[idx] = socket.if_indextoname(idx) if idx else "?"
                got[HEADER.unpack_from(data)[0]][names[idx]] += 1
    return {f: dict(v) for f, v in got.items()}


def opened_from_site(lab: Lab, src: str, flows: int, dst: str, port: int, count: int = 5,
                     gap: float = 0.2) -> dict[int, dict[str, int]]:
    """Run :func:`open_flows` in the site namespace."""
    cmd = [sys.executable, "-m", "steerd.lab.seqflow", "open", "--src", src, "--flows", str(flows),
           "--to", dst, "--port", str(port), "--count", str(count), "--gap", str(gap)]
    p = ns_popen(lab.site, cmd, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=count * gap + 60)
    return {int(k): v for k, v in json.loads(out).items()}


def set_loss(lab: Lab, tunnel: str, dsts: list[str], loss_pct: float) -> None:
    """Drop *loss_pct* % (100: all) of the packets to *dsts* arriving at the site
    through *tunnel*, at random; 0 removes the rule."""
    t = lab.tunnel(tunnel)
    ns_sh(lab.site, "nft", "-f", "-", input=(
        f"table ip {DROP_TABLE} {{\n  chain pre {{ type filter hook prerouting priority -300; "
        f"policy accept; }}\n}}\nflush chain ip {DROP_TABLE} pre\n"))
    if loss_pct <= 0:
        return
    what = "drop" if loss_pct >= 100 else f"numgen random mod 10000 < {int(loss_pct * 100)} drop"
    ns_sh(lab.site, "nft", "add", "rule", "ip", DROP_TABLE, "pre", "iifname", t.site_if,
          "ip", "daddr", "{ " + ", ".join(dsts) + " }", *what.split())


def start_receiver(lab: Lab, port: int) -> subprocess.Popen:
    """The receiver in the site namespace (stop it with :func:`collect`)."""
    p = ns_popen(lab.site, [sys.executable, "-m", "steerd.lab.seqflow", "recv", "--port", str(port)],
                 stdout=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("seqflow receiver did not start")
    return p


def collect(p: subprocess.Popen) -> dict[int, dict]:
    """Stop the receiver; per flow: unique, packets and bytes per interface."""
    time.sleep(0.3)      # the last packets in flight
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    return {int(k): v for k, v in json.loads(out).items()}


def send_flows(lab: Lab, targets: list[str], port: int, pps: float, duration: float) -> dict[int, int]:
    """Run :func:`send` in the core namespace; packets sent per flow."""
    cmd = [sys.executable, "-m", "steerd.lab.seqflow", "send", "--port", str(port),
           "--pps", str(pps), "--duration", str(duration)]
    for t in targets:
        cmd += ["--to", t]
    p = ns_popen(lab.core, cmd, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=duration + 60)
    return {int(k): v for k, v in json.loads(out).items()}


def main() -> None:
    ap = argparse.ArgumentParser(prog="steerd.lab.seqflow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=5004)
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, default=7)
    o = sub.add_parser("open")
    o.add_argument("--src", required=True)
    o.add_argument("--flows", type=int, default=40)
    o.add_argument("--to", required=True)
    o.add_argument("--port", type=int, default=7)
    o.add_argument("--count", type=int, default=5)
    o.add_argument("--gap", type=float, default=0.2)
    s = sub.add_parser("send")
    s.add_argument("--to", action="append", required=True)
    s.add_argument("--port", type=int, default=5004)
    s.add_argument("--pps", type=float, default=50)
    s.add_argument("--duration", type=float, default=10)
    a = ap.parse_args()
    if a.cmd == "send":
        print(json.dumps(send(a.to, a.port, a.pps, a.duration)))
        return
    if a.cmd == "echo":
        echo(a.port)
        return
    if a.cmd == "open":
        print(json.dumps(open_flows(a.src, a.flows, a.to, a.port, a.count, a.gap)))
        return
    rx = SeqReceiver(a.port)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    print("ready", flush=True)
    while not stop[0]:
        if select.select([rx.sock], [], [], 0.2)[0]:
            rx.drain()
    rx.drain()
    json.dump(rx.report(), sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
