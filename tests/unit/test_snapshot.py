"""The typed snapshot status, metrics and the control socket render
(steerd.status.Snapshots): it says what the controller decided, and it is taken
once per change: a status or a scrape without a change reuses it, and a change
at one site of a hub rebuilds that site's rows only."""
from __future__ import annotations

import yaml

from steerd.config import parse_config
from steerd.controller import Hub
from steerd.lab.topology import HubLab
from steerd.status import Readings, Snapshots, build


def hub(sites: int = 3, tunnels: int = 3) -> Hub:
    raw = HubLab("u", sites, tunnels).config()
    raw["dataplane"]["slots"] = 256
    h = Hub(parse_config(yaml.safe_dump(raw, sort_keys=False), "hub.yaml"), 0.0)
    h.rebalance([1.0] * (sites * tunnels), 0.0)
    return h


def test_the_snapshot_is_what_the_controller_decided():
    h = hub()
    snap = Snapshots().of(h)
    assert [t.name for t in snap.tunnels] == [t.name for t in h.cfg.tunnels]
    assert [t.state for t in snap.tunnels] == h.states
    assert [t.weight for t in snap.tunnels] == h.weights
    assert [t.share for t in snap.tunnels] == h.shares()
    assert [s.active_ha_role for s in snap.sites] == [h.active_role(i) for i in range(3)]
    assert snap.link_changes == h.link_changes == 0


def test_taken_once_per_change_and_only_for_the_changed_site():
    h = hub()
    snaps = Snapshots()
    first = snaps.of(h)
    assert snaps.of(h) is first                    # no change: the same snapshot
    name = h.cfg.tunnels[4].name                   # site 1's second tunnel
    h.sa_change(4, False, "SA deleted", 1.0)
    second = snaps.of(h)
    assert second is not first
    assert second.tunnels[4].state == "down" and second.link_changes == 1
    assert second.sites[1].up == 2 and second.tunnels[4].name == name
    # the other sites' rows are the very objects of the first snapshot (not rebuilt)
    for k in (0, 1, 2, 6, 7, 8):
        assert second.tunnels[k] is first.tunnels[k]
    assert second.sites[0] is first.sites[0] and second.sites[2] is first.sites[2]
    # site 1's other tunnels were rebuilt: their share moved
    assert second.tunnels[3].share > first.tunnels[3].share
    # a drain, an HA failover and a reload's new controller are changes too
    h.drain(3, True, 2.0)
    third = snaps.of(h)
    assert third.tunnels[3].drained and third is not second
    h.sa_change(5, False, "SA deleted", 3.0)       # site 1 now has no tunnel up
    assert snaps.of(h).sites[1].up == 0


def test_a_reload_starts_a_new_snapshot():
    h, snaps = hub(), Snapshots()
    before = snaps.of(h)
    h2 = Hub(h.cfg, 1.0)
    h2.carry_over(h, 1.0)
    h2.rebalance([1.0] * 9, 1.0, force=True)       # as the daemon's reload does
    after = snaps.of(h2)
    assert after is not before and after.tunnels == before.tunnels


def test_the_status_document_renders_snapshot_and_readings():
    h = hub(2, 3)
    snap = Snapshots().of(h)
    rd = Readings(stats=[None] * 6, tx=[(k, 100 * k) for k in range(6)], flows=[0] * 6, rules=4,
                  config_generation=3)
    doc = build(snap, rd, site=snap.sites[1].name)
    assert doc["site"] == snap.sites[1].name and doc["active_ha_role"] == "primary"
    assert [t["name"] for t in doc["tunnels"]] == [t.name for t in snap.tunnels[3:]]
    assert [t["tx_packets"] for t in doc["tunnels"]] == [3, 4, 5]
    assert doc["rules"] == 4 and doc["config_generation"] == 3
    assert doc["tunnels"][0]["rtt_ms"] is None and doc["tunnels"][0]["mos"] is None
