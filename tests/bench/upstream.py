"""The upstream counter at hub scale (issues 13, 16): what 3,000 tunnels cost.

In one namespace with N veth pairs (default 3,000 = 1,000 sites x 3), side by side:

* start: the counter loaded for 1,000 sites (6,000 tunnel ids) and its filter
  put on every tunnel interface by the packed netlink exchange
  (dataplane/tcbatch.py), against the baseline of pyroute2 on one socket
  (two requests an interface), both on interfaces without clsact. Goal: <= 3 s
  (a tenth of the hub's 30 s start goal);
* steady state: the daemon's scan every 250 ms (a memory read of the mapped
  table and a compare, to find the tunnels that received) with 1 packet a
  second up every tunnel (probe replies), against the baseline of reading all
  tunnels and feeding every monitor at each scan. Goal: <= 1 % of a core.

    tests/bench/upstream [--tunnels N] [--seconds S]      (root)
"""
from __future__ import annotations

import argparse
import ctypes
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from benchout import record, verdict   # noqa: E402

from steerd import silence   # noqa: E402
from steerd.config import HealthConfig, ProbeConfig   # noqa: E402
from steerd.dataplane import tc   # noqa: E402
from steerd.dataplane.program import tunnel_ids   # noqa: E402
from steerd.dataplane.upstream import UpstreamCounter   # noqa: E402
from steerd.health import LinkMonitor   # noqa: E402


CLONE_NEWNET = 0x40000000
ATTACH_GOAL = 3.0      # s: a tenth of the hub's start goal (30 s for 1,000 sites)


def sh(*cmd: str, **kw) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@contextmanager
def hub_links(n: int):
    ns = f"sdt{uuid.uuid4().hex[:5]}"
    sh("ip", "netns", "add", ns)
    try:
        for key in ("all", "default"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        batch = "".join(f"link add u{i} type veth peer name v{i}\nlink set v{i} up\nlink set u{i} up\n"
                        for i in range(n))
        sh("ip", "-n", ns, "-batch", "-", input=batch)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET):   # this process lives there now
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        os.close(fd)
        yield ns
    finally:
        sh("ip", "netns", "del", ns)


def cpu() -> float:
    return time.process_time()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tunnels", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    n, sites = a.tunnels, -(-a.tunnels // 3)
    tunnels = {s * 6 + p: f"u{3 * s + p}" for s in range(sites) for p in range(3) if 3 * s + p < n}
    print(f"{n} tunnel interfaces ({sites} sites x 3), counter for {tunnel_ids(sites)} tunnel ids; "
          f"load {os.getloadavg()[0]:.1f}")
    with hub_links(n):
        counter = UpstreamCounter(tunnel_ids(sites))
        try:
            # baseline first: pyroute2, one socket, the same two requests per interface
            from pyroute2 import IPRoute
            from pyroute2.netlink.exceptions import NetlinkError
            t0 = time.monotonic()
            with IPRoute() as ipr:
                for ifname in tunnels.values():
                    idx = socket.if_nametoindex(ifname)
                    try:
                        ipr.tc("add", "clsact", idx)
                    except NetlinkError as exc:
                        if exc.code != 17:
                            raise
                    ipr.tc("replace-filter", "bpf", idx, handle=tc.FILTER_HANDLE, fd=counter.fd,
                           name=tc.UPSTREAM_NAME, parent=tc.INGRESS_PARENT, prio=tc.UPSTREAM_PRIO,
                           protocol=0x0003, direct_action=True)
            base_attach_s = time.monotonic() - t0
            # the same fresh start for steerd's way: no clsact (and so no filter) anywhere
            sh("tc", "-batch", "-", input="".join(f"qdisc del dev {i} clsact\n" for i in tunnels.values()))
            t0 = time.monotonic()
            missing = counter.set_interfaces(tunnels)
            attach_s = time.monotonic() - t0
            assert not missing, missing[:5]
            ok_attach = attach_s <= ATTACH_GOAL
            print(f"filter on {n} interfaces: {attach_s:.2f} s (baseline pyroute2, one socket: "
                  f"{base_attach_s:.2f} s; ratio {attach_s / base_attach_s:.3f}); goal <= {ATTACH_GOAL:.0f} s: "
                  f"{verdict(ok_attach)}")

            # steady state: every tunnel receives one packet a second, at its own phase
            tids = sorted(tunnels)
            senders = {}
            for tid in tids:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(("v" + tunnels[tid][1:], 0))
                senders[tid] = s
            frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"probe-reply" * 5
            probe, health = ProbeConfig(interval=1.0, timeout=1.0, window=10), HealthConfig()

            def run(scan_all: bool) -> tuple[float, int]:
                mons = {t: LinkMonitor(str(t), probe, health, time.monotonic()) for t in tids}
                seen = None
                fed = 0
                k, start = 0, time.monotonic()
                busy = 0.0
                next_scan = start
                while (now := time.monotonic()) < start + a.seconds:
                    # this second's share of the packets (not timed: the site sends them)
                    due = int((now - start) * len(tids))
                    while k < due:
                        senders[tids[k % len(tids)]].send(frame)
                        k += 1
                    if now >= next_scan:
                        c0 = cpu()
                        rx = counter.packets(tids)
                        if scan_all or seen is None:
                            which = range(len(tids))
                        else:
                            which = [i for i, (x, y) in enumerate(zip(rx, seen)) if x != y]
                        seen = rx
                        readings = counter.read([tids[i] for i in which])
                        for i, (r, last) in zip(which, readings):
                            mons[tids[i]].on_upstream(now, r, last, 0)
                            mons[tids[i]].upstream_watched(now)
                        fed += len(readings)
                        busy += cpu() - c0
                        next_scan += silence.IDLE_STEP
                    time.sleep(0.002)
                return busy / a.seconds * 100, fed, sum(counter.packets(tids))

            base_pct, base_fed, rx0 = run(scan_all=True)
            pct, fed, rx1 = run(scan_all=False)
            print(f"packets up: {rx0 / a.seconds:.0f}/s, then {(rx1 - rx0) / a.seconds:.0f}/s "
                  f"(every tunnel once a second: {len(tids)}/s)")
            ok_cpu = pct <= 1.0
            print(f"steady state, 1 pkt/s up each tunnel, a scan every {silence.IDLE_STEP * 1000:.0f} ms: "
                  f"{pct:.2f} % of a core, {fed / a.seconds:.0f} monitor updates/s (baseline, every "
                  f"monitor at every scan: {base_pct:.2f} %, {base_fed / a.seconds:.0f} updates/s; ratio "
                  f"{pct / base_pct:.2f}); goal <= 1 %: {verdict(ok_cpu)}")
            record(tunnels=n, attach_s=round(attach_s, 3), attach_baseline_s=round(base_attach_s, 3),
                   scan_cpu_pct=round(pct, 3), scan_cpu_baseline_pct=round(base_pct, 3))
        finally:
            counter.close()
    return 0 if ok_attach and ok_cpu else 1


if __name__ == "__main__":
    sys.exit(main())
