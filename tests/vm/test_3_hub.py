"""Issue 13 over real IKEv2/XFRM: one steerd in hub mode terminates two sites.

The session's lab gets a second site (namespace site2, 10.21.0.0/16, two primary
tunnels ipsec7/ipsec8 over their own WAN links, its own charon); the pop's
charon reloads the swanctl.conf rendered from the hub config. One steerd for
the module, on that config:

(a) each site's flows are split by that site's own weights (site A 100:50:25
    over ipsec1..3, site B 30:90 over ipsec7/8), counted at each site;
(b) 100 % loss on one of site A's tunnels moves that tunnel's flows, and not
    one flow of site B (nor of A's healthy tunnels).
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import vmlab
from conftest import running_steerd
from measure import measured
from steerd.lab.runner import Receiver, flow_tunnels, send, split

A = [lk for lk in vmlab.LINKS if lk.role == "primary"]
B = list(vmlab.SITE_B_LINKS)
WANT_A = {lk.xfrm: vmlab.BANDWIDTHS[lk.index] / sum(vmlab.BANDWIDTHS[k.index] for k in A) for lk in A}
WANT_B = {lk.xfrm: vmlab.SITE_B_BANDWIDTHS[lk.index] / sum(vmlab.SITE_B_BANDWIDTHS.values()) for lk in B}
FIRST_B = 100000     # flow ids of site B's flows start here


@pytest.fixture(scope="module")
def hub(vm_lab):
    took = vm_lab.add_second_site()
    measured("second site (namespace, links, charon, two IKEv2 tunnels)", f"{took:.1f} s")
    with running_steerd(vm_lab, vm_lab.hub_config(), "hub steerd start", "steerd-hub.yaml") as proc:
        _wait(lambda: all(t["state"] == "up" for t in proc.status()["tunnels"]
                          if t["name"] in {lk.name for lk in A + B}), 60.0, "every primary up")
        yield proc


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if v := pred():
            return v
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not after {timeout}s")


def _receivers(lab, port: int, name: str) -> tuple[Receiver, Receiver]:
    """One per-flow receiver in each site's namespace."""
    site_b = SimpleNamespace(site=lab.site_b, run_dir=lab.run_dir)
    return Receiver(lab, port=port, name=f"{name}-a"), Receiver(site_b, port=port, name=f"{name}-b")


def _shares(per_flow: dict, names) -> dict[str, float]:
    counts = split(per_flow)
    total = sum(counts.values()) or 1
    return {n: counts.get(n, 0) / total for n in names}


def test_each_site_split_by_its_own_weights(vm_lab, hub):
    st = {t["name"]: t for t in hub.status()["tunnels"]}
    assert {st[lk.name]["site"] for lk in A} == {"vm-branch"} and {st[lk.name]["site"] for lk in B} == {"branch-b"}
    rx_a, rx_b = _receivers(vm_lab, 5201, "hub-split")
    try:
        send(vm_lab, 2000, dst=vmlab.SITE_RANGE, duration=4.0, pps=1000, port=5201)
        send(vm_lab, 2000, dst=vmlab.SITE_B_RANGE, duration=4.0, pps=1000, port=5201, first_flow=FIRST_B)
        time.sleep(1.0)
    finally:
        per_a, per_b = rx_a.stop(), rx_b.stop()
    assert all(f < FIRST_B for f in per_a) and all(f >= FIRST_B for f in per_b), "a flow reached the other site"
    assert len(per_a) >= 1990 and len(per_b) >= 1990, (len(per_a), len(per_b))
    got_a, got_b = _shares(per_a, WANT_A), _shares(per_b, WANT_B)
    measured("hub split over ESP (each site, by interface)",
             "site A " + ", ".join(f"{i} {got_a[i] * 100:.1f}% (want {w * 100:.1f}%)" for i, w in WANT_A.items())
             + "; site B " + ", ".join(f"{i} {got_b[i] * 100:.1f}% (want {w * 100:.1f}%)"
                                       for i, w in WANT_B.items()))
    for got, want in ((got_a, WANT_A), (got_b, WANT_B)):
        for ifname, w in want.items():
            assert abs(got[ifname] - w) <= 0.04, (ifname, got, want)


def test_loss_on_one_sites_tunnel_moves_only_that_sites_flows(vm_lab, hub):
    lk = A[0]
    rx_a, rx_b = _receivers(vm_lab, 5202, "hub-loss")
    bg = [send(vm_lab, 300, dst=vmlab.SITE_RANGE, duration=25.0, pps=600, port=5202, background=True),
          send(vm_lab, 300, dst=vmlab.SITE_B_RANGE, duration=25.0, pps=600, port=5202, first_flow=FIRST_B,
               background=True)]
    try:
        # every flow of both sites seen (two senders start slowly in an emulated guest)
        before_a, before_b = _wait(lambda: (lambda a, b: (a, b) if len(a) >= 295 and len(b) >= 295 else None)(
            flow_tunnels(rx_a.snapshot()), flow_tunnels(rx_b.snapshot())), 15.0, "both sites' flows arriving")
        on_link = {f for f, t in before_a.items() if t == lk.xfrm}
        assert on_link, split(rx_a.snapshot())
        t_cut = time.monotonic()
        vm_lab.impair(lk.name, vm_lab.netem_profile[lk.number][0], 0.0, 100.0)
        _wait(lambda: next(t for t in hub.status()["tunnels"] if t["name"] == lk.name)["state"] == "down",
              10.0, f"{lk.name} down")
        detect = time.monotonic() - t_cut
        time.sleep(3.0)     # flows keep going on their new tunnels
        for p in bg:
            p.kill()
            p.wait()
        time.sleep(0.5)
    finally:
        vm_lab.restore(lk.name)
        for p in bg:
            if p.poll() is None:
                p.kill()
        per_a, per_b = rx_a.stop(), rx_b.stop()
    moved_b = [f for f, t in before_b.items() if set(per_b.get(f, {})) != {t}]
    moved_a = [f for f, t in before_a.items() if t != lk.xfrm and set(per_a.get(f, {})) != {t}]
    left = [f for f in on_link if not set(per_a.get(f, {})) - {lk.xfrm}]
    measured("hub: 100% loss on one of site A's tunnels",
             f"{lk.name} down {detect:.2f} s after the cut; {len(on_link)} of its flows moved to A's other "
             f"tunnels ({len(left)} not seen elsewhere); site B flows moved: {len(moved_b)} of {len(before_b)}; "
             f"A's other flows moved: {len(moved_a)}")
    assert moved_b == [], f"{len(moved_b)} flows of site B moved"
    assert moved_a == [], f"{len(moved_a)} flows of site A's healthy tunnels moved"
    assert left == [], f"{len(left)} flows stayed on the lossy {lk.xfrm}"
    assert all(set(per_a.get(f, {})) - {lk.xfrm} <= {k.xfrm for k in A} for f in on_link)
