"""Issue 7: steerd steering real ESP traffic over XFRM interfaces (inside the VM).

One steerd for the module, started as the namespace lab starts it
(`python -m steerd.daemon --config X` in `ip netns exec pop`); tests run in file
order and restore every impairment they set:

(d) probe accuracy with netem round trips of 20/40/80 ms (first: a quiet window);
(b) split by weight 100:50:25 over the three primary tunnels, counted at the site
    by the interface each flow arrived on (and the site's XFRM interface counters);
    a rule's flows leave only through its WAN role's tunnel;
(c) failover: 100 % netem loss on one primary underlay moves its flows (time
    printed); all three primaries cut -> the secondaries carry the traffic;
(f) issue 16: a busy tunnel (150 pkt/s up from the site) cut both ways -> a suspect
    from its upstream silence and down inside the 1 s probe interval;
(e) `swanctl --terminate` of one IKE SA -> the tunnel is down at once (XFRM awareness).
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime

import pytest

import vmlab
from conftest import running_steerd
from measure import measured
from steerd.cli import request
from steerd.lab.runner import Receiver, flow_tunnels, send, send_up, split

PRIMARY = [lk for lk in vmlab.LINKS if lk.role == "primary"]
SECONDARY = [lk for lk in vmlab.LINKS if lk.role == "secondary"]
WEIGHTS = {lk.xfrm: vmlab.BANDWIDTHS[lk.index] / sum(vmlab.BANDWIDTHS.values()) for lk in PRIMARY}
XFRM_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xfrm_tool.py")
IFRATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ifrate.py")


@pytest.fixture(scope="module")
def steerd(vm_lab):
    # debug: the traffic-driven suspicions are in the log (test_busy_tunnel_...)
    with running_steerd(vm_lab, vm_lab.steerd_config(), "steerd start", "steerd.yaml",
                        "--log-level", "debug") as proc:
        yield proc


def _status(steerd) -> dict:
    return steerd.status()


def _tunnel(st: dict, name: str) -> dict:
    return next(t for t in st["tunnels"] if t["name"] == name)


def _wait(pred, timeout: float, step: float = 0.05, what: str = "condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v, time.monotonic() - t0
        time.sleep(step)
    raise TimeoutError(f"{what}: not after {timeout}s")


def _wait_all_up(steerd, names, timeout: float = 40.0) -> float:
    _, took = _wait(lambda: all(_tunnel(_status(steerd), n)["state"] == "up" for n in names),
                    timeout, 0.2, f"{names} up")
    return took


def _drops_since(lab, before: dict[str, int]) -> dict[str, int]:
    after = lab.drop_counters()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def _assert_arrived(per_flow: dict, flows: int, sent: int, drops: dict[str, int]) -> None:
    """Every flow arrived; under emulation the site's Python receiver may miss a few
    packets when the guest is busy, so a flow counts if any of its packets arrived
    and at most 0.5 % of the flows may be missing entirely."""
    missing = flows - len(per_flow)
    received = sum(sum(v.values()) for v in per_flow.values())
    print(f"sent {sent} packets of {flows} flows, received {received}; flows missing {missing}; "
          f"drops in the lab: {drops or 'none'}")
    assert missing <= flows * 0.005, f"{missing} of {flows} flows never arrived (sent {sent}; drops {drops})"


def _shares(counts: Counter, ifnames) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {i: counts.get(i, 0) / total for i in ifnames}


# ---------------------------------------------------------------- (d) probe accuracy

_PING_RE = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def test_probe_rtt_accuracy(vm_lab, steerd):
    """netem gives 20/40/80 ms round trips on the primaries. The emulated machine adds
    its own processing time to every round trip (ESP in software under qemu TCG), so the
    truth is the netem RTT plus that floor, which ping measures through the same tunnel
    (its minimum; its mean when the guest is busy, as on a loaded CI host). steerd's
    median RTT over its window must be within 1 ms + 5 % of that range.
    The mean (`rtt_ms`) is printed too: under emulation single round trips spike when
    the host is busy (ping sees the same spikes), which moves a 10-sample mean by more
    than the tolerance without any measuring error; one more window is allowed when
    the first one was disturbed."""
    window = 10   # the config's probe window (1 s probes): every sample from a quiet guest
    _wait(lambda: all(_tunnel(_status(steerd), lk.name)["rtt_ms"] for lk in PRIMARY), 30.0, 0.5,
          "first RTT samples")
    for attempt in (1, 2):
        time.sleep(window + 1.0)
        refs = {}
        for lk in PRIMARY:
            m = _PING_RE.search(vm_lab.ping(lk.name, count=10, interval=0.1))
            assert m, f"{lk.name}: ping failed"
            refs[lk.name] = tuple(float(m.group(i)) for i in (1, 2, 3))
        st = _status(steerd)
        lines, failures = [], []
        for lk in PRIMARY:
            t = _tunnel(st, lk.name)
            netem_rtt = 2 * vm_lab.netem_profile[lk.number][0]
            floor = max(0.0, refs[lk.name][0] - netem_rtt)
            want_lo, want_hi = netem_rtt + floor, max(netem_rtt + floor, refs[lk.name][1])
            tol = 1.0 + 0.05 * netem_rtt
            got = t.get("rtt_p50_ms", t["rtt_ms"])
            lines.append(f"{lk.name}: netem {netem_rtt:.0f} ms (+{floor:.1f} ms emulation floor), steerd "
                         f"median {got} ms, mean {t['rtt_ms']} ms, jitter {t['jitter_ms']} ms; ping "
                         f"min/avg/max {refs[lk.name][0]:.1f}/{refs[lk.name][1]:.1f}/{refs[lk.name][2]:.1f} ms "
                         f"(tolerance ±{tol:.1f} ms)")
            if got is None or not want_lo - tol <= got <= want_hi + tol:
                failures.append(lines[-1])
        measured(f"probe RTT (window {attempt})", "; ".join(lines))
        if not failures:
            return
    assert not failures, failures


def test_classifier_verifier_cost_on_this_kernel(steerd):
    """The README's 6.1 figure: what the verifier processed for the running
    daemon's programs (the kernel's own count; tests/bench/verifier on the host)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    from verifier import LIMIT, loaded
    insns = loaded()
    measured(f"verifier, kernel {os.uname().release}",
             ", ".join(f"{fn} {n:,} insns ({n / 1e6:.2f}M)" for fn, n in sorted(insns.items()))
             + f" of the {LIMIT:,} limit")
    assert set(insns) == {"steer", "qos_classify"}, insns
    assert all(0 < n <= LIMIT // 2 for n in insns.values()), insns


# ---------------------------------------------------------------- (b) split

def test_split_by_weight_over_the_primary_xfrm_tunnels(vm_lab, steerd):
    flows = 3000
    rx = Receiver(vm_lab, port=5101, name="split")
    rx_before, drops = vm_lab.site_rx(), vm_lab.drop_counters()
    try:
        sent = send(vm_lab, flows, duration=4.0, pps=1500, port=5101)   # two packets a flow
        time.sleep(1.0)   # the slowest tunnel adds 40 ms; the receiver drains
    finally:
        per_flow = rx.stop()
    rx_after = vm_lab.site_rx()
    _assert_arrived(per_flow, flows, sent, _drops_since(vm_lab, drops))
    assert all(len(ifs) == 1 for ifs in per_flow.values()), "a flow changed tunnel"
    counts = split(per_flow)
    shares = _shares(counts, [lk.xfrm for lk in vmlab.LINKS])
    measured("split over ESP (site, by interface)",
             ", ".join(f"{i} {shares[i] * 100:.1f}% (want {WEIGHTS[i] * 100:.1f}%)" for i in WEIGHTS))
    for ifname, want in WEIGHTS.items():
        assert abs(shares[ifname] - want) <= 0.03, f"{ifname}: {shares[ifname]:.3f} vs {want:.3f} ({counts})"
    for lk in SECONDARY:
        assert counts.get(lk.xfrm, 0) == 0, f"secondary {lk.xfrm} got flows: {counts}"
    # the site's XFRM interface counters agree (probes add a few packets per tunnel)
    delta = {lk.xfrm: rx_after[lk.name] - rx_before[lk.name] for lk in PRIMARY}
    total = sum(delta.values())
    for ifname, want in WEIGHTS.items():
        assert abs(delta[ifname] / total - want) <= 0.05, f"interface counters {delta}"


def test_rule_pins_flows_to_its_wan_tunnel(vm_lab, steerd):
    rules = ("rules:\n  - name: bulk\n    match: {dst: [10.20.77.0/24], proto: udp}\n"
             "    wan: wan3\n    fallback: auto\n")
    reply = request(vm_lab.socket, {"cmd": "rules_apply", "text": rules, "path": "vm-rules.yaml"})
    assert reply["ok"], reply
    rx = Receiver(vm_lab, port=5102, name="pin")
    try:
        send(vm_lab, 200, dst="10.20.77.0/24", duration=1.0, pps=2000, port=5102)
        send(vm_lab, 600, dst="10.20.0.0/24", duration=1.0, pps=2000, port=5102, first_flow=10000)
        time.sleep(0.8)
    finally:
        per_flow = rx.stop()
        request(vm_lab.socket, {"cmd": "rules_apply", "text": "rules: []\n", "path": "vm-rules.yaml"})
    pinned = Counter(t for f, t in flow_tunnels(per_flow).items() if f < 10000)
    others = Counter(t for f, t in flow_tunnels(per_flow).items() if f >= 10000)
    assert pinned == Counter({"ipsec3": 200}), pinned
    assert set(others) == {"ipsec1", "ipsec2", "ipsec3"}, others


# ---------------------------------------------------------------- (c) failover

def _flow_moves(rx: Receiver, flows: set[int], old_if: str, since: dict[int, dict[str, int]],
                t_cut: float, timeout: float) -> float:
    """Seconds from t_cut until every flow in *flows* has new packets on another interface."""
    deadline = t_cut + timeout
    trace = []
    while time.monotonic() < deadline:
        snap = rx.snapshot()
        now = time.monotonic()
        moved = {f for f in flows
                 if any(n > since.get(f, {}).get(i, 0) for i, n in snap.get(f, {}).items() if i != old_if)}
        trace.append(f"{now - t_cut:.2f}s:{len(moved)}")
        if moved == flows:
            print(f"flows moved off {old_if} (time after the cut: count): {' '.join(trace)}")
            return now - t_cut
        time.sleep(0.05)
    raise TimeoutError(f"{len(flows - moved)} of {len(flows)} flows still not moved off {old_if}: {trace}")


class IfRate:
    """rx_packets of the site's XFRM interfaces sampled every 20 ms (kernel counters:
    when traffic moves, to a few tens of ms, whatever the Python receiver's pace)."""

    def __init__(self, lab, seconds: float = 60.0):
        self.names = [lk.xfrm for lk in lab.links]
        self.proc = lab.places["site"].popen([sys.executable, IFRATE, str(seconds), "0.02", *self.names],
                                             stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> list[tuple[float, dict[str, int]]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(10)
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == len(self.names) + 1:
                rows.append((float(parts[0]), dict(zip(self.names, map(int, parts[1:])))))
        return rows


def _traffic_back(rows, t_cut: float, lost_if: str, window: float = 0.2) -> float | None:
    """Seconds after t_cut when the surviving interfaces carry >= 90 % of the packet
    rate all interfaces carried in the second before the cut."""
    def rate(t0: float, t1: float, names) -> float:
        a = next((r for r in rows if r[0] >= t0), None)
        b = next((r for r in reversed(rows) if r[0] <= t1), None)
        if not a or not b or b[0] <= a[0]:
            return 0.0
        return sum(b[1][n] - a[1][n] for n in names) / (b[0] - a[0])
    names = list(rows[0][1]) if rows else []
    survivors = [n for n in names if n != lost_if]
    base = rate(t_cut - 1.0, t_cut, names)
    for t, _ in rows:
        if t >= t_cut + window and rate(t - window, t, survivors) >= 0.9 * base:
            return t - t_cut
    return None


def test_loss_on_a_primary_underlay_moves_its_flows(vm_lab, steerd):
    lk = PRIMARY[0]
    rx = Receiver(vm_lab, port=5103, name="failover")
    sender = send(vm_lab, 300, duration=14.0, pps=1000, port=5103, background=True)
    rates = IfRate(vm_lab)
    try:
        time.sleep(3.0)
        before = rx.snapshot()
        on_link = {f for f, t in flow_tunnels(before).items() if t == lk.xfrm}
        assert on_link, f"no flow on {lk.xfrm}: {split(before)}"
        delay = vm_lab.netem_profile[lk.number][0]
        t_cut, wall_cut = time.monotonic(), time.time()
        vm_lab.impair(lk.name, delay, 0.0, 100.0)
        _, detect = _wait(lambda: _tunnel(_status(steerd), lk.name)["state"] == "down", 10.0, 0.02,
                          f"{lk.name} down")
        moved = _flow_moves(rx, on_link, lk.xfrm, before, t_cut, 10.0)
        back = _traffic_back(rates.stop(), t_cut, lk.xfrm)
        evs = request(vm_lab.socket, {"cmd": "events", "since": wall_cut})["events"]
        print("steerd events after the cut:", [(e.get("type"), e.get("tunnel"), e.get("reason"))
                                               for e in evs][:8])
        measured("failover on 100% loss", f"{lk.name} down {detect:.2f} s after the cut; site receives "
                 f"the full rate on the other tunnels {back if back is None else round(back, 2)} s after "
                 f"the cut; all {len(on_link)} of its flows seen on other tunnels by {moved:.2f} s")
        sender.wait(60)
    finally:
        vm_lab.restore(lk.name)
        if sender.poll() is None:
            sender.kill()
        if rates.proc.poll() is None:
            rates.stop()
        per_flow = rx.stop()
    assert back is not None and back <= 3.0, f"traffic not back on the surviving tunnels ({back})"
    assert detect <= 3.0, f"detection took {detect:.2f}s"
    # nothing else moved: flows of the surviving tunnels stayed where they were
    others = {f: t for f, t in flow_tunnels(before).items() if t != lk.xfrm}
    stayed = sum(1 for f, t in others.items() if set(per_flow[f]) == {t})
    assert stayed == len(others), f"{len(others) - stayed} flows of healthy tunnels moved"
    back = _wait_all_up(steerd, [lk.name])
    measured("recovery after the loss ends", f"{lk.name} up again {back:.1f} s after restoring the link")


def test_busy_tunnel_cut_detected_from_its_own_traffic(vm_lab, steerd):
    """Issue 16 over real ESP: 150 pkt/s come up from the site through
    pri-wan2 while flows go down; its underlay is cut both ways (netem 100 %
    loss). The silence makes it a suspect well inside the 1 s probe interval
    (before probe timing could tell) and the confirmations (5 ms apart, each
    late after max(3 x SRTT, SRTT + 4 RTTVAR)) take it down: the event says
    so and carries its own time stamp."""
    # not pri-wan1: the loss test before cut it, and the lost probes in its history
    # raise the loss estimate so far that a traffic suspicion would need more than
    # the confirmations allowed (left to probe timing, by design)
    lk = PRIMARY[1]
    _wait_all_up(steerd, [t.name for t in PRIMARY])
    # modest rates: ESP is software crypto under emulation, and a saturated guest
    # delays the daemon's confirmation probes, not what is measured here
    down = send(vm_lab, 60, duration=20.0, pps=200, port=5106, background=True)
    up = send_up(vm_lab, lk.name, 150, 20.0)
    try:
        time.sleep(4.0)    # the silence watch learns the stream's rate and rhythm
        assert _tunnel(_status(steerd), lk.name)["state"] == "up"
        t_cut = time.time()
        vm_lab.impair(lk.name, vm_lab.netem_profile[lk.number][0], 0.0, 100.0)
        evs, _ = _wait(lambda: [e for e in request(vm_lab.socket, {"cmd": "events", "since": t_cut})["events"]
                                if e.get("type") == "link_down"], 5.0, 0.05, f"{lk.name} down")
    finally:
        vm_lab.restore(lk.name)
        for p in (down, up):
            if p.poll() is None:
                p.kill()
    ev = evs[0]
    took = datetime.fromisoformat(ev["ts"]).timestamp() - t_cut
    m = re.match(r"upstream silent (\d+) ms", ev.get("reason", ""))
    with open(steerd.log_path, encoding="utf-8", errors="replace") as f:
        print("suspicions:", *[ln.rstrip() for ln in f if f"{lk.name} suspect" in ln][-5:], sep="\n  ")
    print("tunnel at the end:", {k: v for k, v in _tunnel(_status(steerd), lk.name).items()
                                 if k in ("state", "loss_pct", "rtt_ms", "jitter_ms")})
    measured("traffic-driven detection (150 pkt/s up, 1 s probes)",
             f"{lk.name} suspect after {m.group(1) if m else '?'} ms of silence, down {took:.3f} s after the "
             f"underlay cut (reason {ev.get('reason')!r})")
    assert ev["tunnel"] == lk.name, evs
    assert m, evs      # the down was decided from the silence, not from a late regular probe
    # detected: the suspicion came well inside the probe interval (the silence is the
    # kernel's time since the last packet, a few ms before the cut at 150 pkt/s)
    assert int(m.group(1)) < 500, ev["reason"]
    # confirmed by probes; an emulated guest on a busy host answers late, so the down
    # itself has the probe-only test's bound (its time is printed)
    assert took < 3.0, f"down {took:.3f} s after the cut: {ev['reason']}"
    _wait_all_up(steerd, [lk.name])


def test_all_primaries_cut_secondaries_carry_traffic(vm_lab, steerd):
    bg = send(vm_lab, 300, duration=30.0, pps=1000, port=5105, background=True)
    rates = IfRate(vm_lab)
    try:
        time.sleep(2.0)
        t_cut = time.monotonic()
        vm_lab.places["pop"].batch("tc", [vmlab.netem_line(lk.underlay, vm_lab.netem_profile[lk.number][0],
                                                           0.0, 100.0) for lk in PRIMARY])
        vm_lab.places["site"].batch("tc", [vmlab.netem_line(lk.underlay, vm_lab.netem_profile[lk.number][0],
                                                            0.0, 100.0) for lk in PRIMARY])
        _, took = _wait(lambda: _status(steerd)["active_ha_role"] == "secondary", 15.0, 0.05,
                        "failover to the secondary role")
        time.sleep(1.5)
        rows = rates.stop()
        bg.kill()
        bg.wait()
        secondaries = [lk.xfrm for lk in SECONDARY]
        back = _traffic_back([(t, {n: c[n] for n in secondaries} | {"primaries": sum(
            c[lk.xfrm] for lk in PRIMARY)}) for t, c in rows], t_cut, "primaries")
        measured("HA failover (all primaries cut)", f"secondary role active {took:.2f} s after the cut; "
                 f"site receives the full rate on the secondaries {back if back is None else round(back, 2)} s "
                 "after the cut")
        rx = Receiver(vm_lab, port=5104, name="ha")
        st0, rx0, drops = _status(steerd), vm_lab.site_rx(), vm_lab.drop_counters()
        try:
            sent = send(vm_lab, 1500, duration=2.0, pps=1500, port=5104)
            time.sleep(0.8)
        finally:
            per_flow = rx.stop()
        time.sleep(1.1)   # steerd refreshes its counters once a second
        st1, rx1 = _status(steerd), vm_lab.site_rx()
        marked = {t["name"]: t["tx_packets"] - _tunnel(st0, t["name"])["tx_packets"] for t in st1["tunnels"]}
        arrived = {name: rx1[name] - rx0[name] for name in rx1}
        print(f"sent {sent}; steerd marked per tunnel {marked}; site XFRM interfaces received {arrived}")
        counts = split(per_flow)
        _assert_arrived(per_flow, 1500, sent, _drops_since(vm_lab, drops))
        assert set(counts) <= {lk.xfrm for lk in SECONDARY}, counts
        shares = _shares(counts, [lk.xfrm for lk in SECONDARY])
        for lk in SECONDARY:
            want = vmlab.BANDWIDTHS[lk.index] / sum(vmlab.BANDWIDTHS.values())
            assert abs(shares[lk.xfrm] - want) <= 0.05, (shares, want)
    finally:
        if bg.poll() is None:
            bg.kill()
        if rates.proc.poll() is None:
            rates.stop()
        for lk in PRIMARY:
            vm_lab.restore(lk.name)
    _, fb = _wait(lambda: _status(steerd)["active_ha_role"] == "primary", 60.0, 0.2, "failback")
    measured("HA failback", f"primary role again {fb:.1f} s after the links came back "
             "(recovery probes + 2 s failback_hold)")
    _wait_all_up(steerd, [lk.name for lk in PRIMARY])
    assert back is not None and back <= 3.0, f"secondaries did not carry the traffic in time ({back})"


# ---------------------------------------------------------------- (e) IKE SA deleted

def test_ike_sa_terminated_marks_the_tunnel_down_at_once(vm_lab, steerd):
    lk = PRIMARY[1]
    pop = vm_lab.places["pop"]
    _wait_all_up(steerd, [t.name for t in PRIMARY])
    since = time.time()
    # steerd.xfrm's watcher in the pop namespace shows when the kernel announced the deletion
    watch = pop.popen([sys.executable, XFRM_TOOL, "watch", "40", lk.xfrm], stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout.readline().startswith("ready"), "xfrm watcher did not start"
        t_cmd = time.monotonic()
        vm_lab.charons["pop"].swanctl("--terminate", "--ike", lk.name, "--timeout", "10")
        t_done = time.monotonic()
        ready, _, _ = select.select([watch.stdout], [], [], 10.0)
        assert ready, "steerd.xfrm saw no SA event after swanctl --terminate"
        ev = json.loads(watch.stdout.readline())
    finally:
        watch.kill()
        watch.wait()
    assert ev["tunnel"] == lk.xfrm and ev["has_sa"] is False and ev["reason"] == "SA deleted", ev
    t_gone = ev["t"]
    assert vmlab.sa_if_ids(pop).get(lk.if_id, 0) == 0, "SAs still there after swanctl --terminate"
    try:
        _wait(lambda: _tunnel(_status(steerd), lk.name)["state"] == "down", 10.0, 0.01, f"{lk.name} down")
        took = time.monotonic() - t_gone
    except TimeoutError:
        took = None
    events = [e for e in request(vm_lab.socket, {"cmd": "events", "since": since})["events"]
              if e.get("tunnel") == lk.name and e.get("type") == "link_down"]
    reason = events[0].get("reason", "") if events else ""
    # the daemon's own reaction time: its event's timestamp against the kernel's announcement
    # (the status polling above adds the control-socket round trips of an emulated guest)
    reacted = (datetime.fromisoformat(events[0]["ts"]).timestamp() - ev["wall"]) if events else None
    measured("IKE SA terminated", f"kernel SA-deleted event {t_gone - t_cmd:.2f} s after `swanctl --terminate` "
             f"started (command took {t_done - t_cmd:.2f} s); steerd's link_down event "
             + (f"{reacted:.3f} s after the kernel's, reason {reason!r}; status showed down {took:.2f} s after"
                if reacted is not None and took is not None else "none within 10 s"))
    # bring it back: the site initiates again; steerd returns the tunnel to up
    t0 = time.monotonic()
    vm_lab.charons["site"].swanctl("--initiate", "--child", lk.name, "--timeout", "30")
    vm_lab.wait_tunnels(30, [lk])
    back = _wait_all_up(steerd, [lk.name])
    measured("IKE SA re-established", f"{lk.name} up in steerd {time.monotonic() - t0:.1f} s after "
             f"re-initiating ({back:.1f} s after its SAs were back)")
    assert reacted is not None and reacted <= 0.5, f"steerd's link_down {reacted}s after the SAs went"
    assert "SA" in reason, reason
