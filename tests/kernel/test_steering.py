"""Issue 2: real flows through the namespace lab are split by weight."""
from __future__ import annotations

import time

import pytest

from steerd.lab.netns import ns_sh
from steerd.lab.runner import send, split
from steerd.lab.topology import TUNNELS, UNSTEERED4

pytestmark = pytest.mark.kernel
EXPECTED = {"gw-p1": 100 / 175, "gw-p2": 50 / 175, "gw-p3": 25 / 175}


def _assert_split(counts, flows: int) -> None:
    assert sum(counts.values()) == flows, counts
    for ifname, share in EXPECTED.items():
        got = counts.get(ifname, 0) / flows
        assert abs(got - share) <= 0.03, f"{ifname}: {got:.3f} vs {share:.3f} ({counts})"
    for t in TUNNELS:
        if t.role == "secondary":
            assert counts.get(t.site_if, 0) == 0, f"secondary {t.site_if} got traffic: {counts}"


@pytest.mark.parametrize("dst", ["10.20.0.0/16", "fd00:20::/48"], ids=["ipv4", "ipv6"])
def test_3000_flows_split_by_weight(lab, start_steerd, receiver, dst):
    start_steerd(None, "--no-probe")
    send(lab, 3000, dst=dst, duration=2.0)
    time.sleep(0.3)
    per_flow = receiver.stop()
    # every flow stays on one tunnel: no packet of a flow on a second one
    assert all(len(ifs) == 1 for ifs in per_flow.values())
    _assert_split(split(per_flow), 3000)


def test_unsteered_destinations_are_not_marked(lab, start_steerd, receiver):
    """Traffic outside network_ranges keeps the main table's route (one tunnel) and
    the classifier counts it as not steered."""
    steerd = start_steerd(None, "--no-probe")
    before = steerd.status()["tunnels"]
    send(lab, 500, dst=UNSTEERED4, duration=1.0)
    time.sleep(0.3)
    counts = split(receiver.stop())
    assert counts == {"gw-p1": 500}
    time.sleep(1.2)  # counters are refreshed once a second
    after = steerd.status()["tunnels"]
    assert [t["tx_packets"] for t in after] == [t["tx_packets"] for t in before]


def test_status_counts_and_policy_routes(lab, start_steerd, receiver):
    steerd = start_steerd(None, "--no-probe")
    sent = send(lab, 300, duration=1.0)
    time.sleep(1.5)
    st = steerd.status()
    assert st["active_ha_role"] == "primary"
    assert sum(t["tx_packets"] for t in st["tunnels"]) == sent
    assert [t["share"] > 0 for t in st["tunnels"]] == [True] * 3 + [False] * 3
    rules = ns_sh(lab.gw, "ip", "rule", "show")
    for i in range(6):
        assert f"fwmark {hex((i + 1) << 24)}/0xf000000 lookup {2101 + i}" in rules
    routes = ns_sh(lab.gw, "ip", "route", "show", "table", "2101")
    assert "10.20.0.0/16 dev tun-p1" in routes
