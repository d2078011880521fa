"""Hub mode's pure core: one Controller per site; a site's events reprogram only
that site, each site's slot table moves only the slots its weights require."""
from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.config import MAX_TUNNELS, parse_config
from steerd.controller import Hub
from steerd.health import Transition
from steerd.lab.topology import HubLab
import yaml


def hub_raw(sites: int, tunnels: int = 6, **top) -> dict:
    cfg = HubLab("u", sites, tunnels).config(**top)
    cfg["dataplane"]["slots"] = 256
    return cfg


def hub_cfg(sites: int, tunnels: int = 6, **top):
    return parse_config(yaml.safe_dump(hub_raw(sites, tunnels, **top), sort_keys=False), "hub.yaml")


def tables(h: Hub) -> dict[int, tuple[int, ...]]:
    return {i: tuple(c.slots or ()) for i, c in enumerate(h.sites)}


def minimal_moves(old: list[int], new: list[int]) -> int:
    a, b = Counter(old), Counter(new)
    return sum(abs(a[t] - b[t]) for t in set(a) | set(b)) // 2


def test_programming_speaks_data_path_ids():
    cfg = hub_cfg(3, 3)
    h = Hub(cfg, 0.0, site_ids=[5, 0, 9])
    progs = [p for p, _ in h.rebalance([1.0] * 9, 0.0)]
    assert [p.site for p in progs] == [5, 0, 9]
    assert set(progs[0].slots) == {5 * MAX_TUNNELS + k for k in range(3)}
    assert progs[2].wan_tunnels == {"wan1": 54, "wan2": 55, "wan3": 56}
    assert h.tunnel_id(4) == 1 and h.tunnel_id(8) == 56


def test_one_sites_primaries_down_fails_over_that_site_only():
    h = Hub(hub_cfg(3), 0.0)
    h.rebalance([1.0] * 18, 0.0)
    before = tables(h)
    notes = []
    for k in range(3):
        prog, n = h.link_state(6 + k, "down", 1.0)   # site 1's primaries
        notes += n
        assert prog is not None and prog.site == 1
    assert [h.active_role(i) for i in range(3)] == ["primary", "secondary", "primary"]
    assert [n.extra["site"] for n in notes if n.type == "ha_failover"] == ["site1"]
    after = tables(h)
    assert after[0] == before[0] and after[2] == before[2]
    assert set(after[1]) == {3, 4, 5}
    # failback after the site's own hold, by the tick (only site 1 is ticked)
    h.link_state(6, "up", 2.0)
    assert h.tick(10.0) == []
    [(prog, n)] = h.tick(40.0)
    assert prog.site == 1 and n[0].type == "ha_failback" and h.active_role(1) == "primary"


def test_per_site_failback_hold():
    text = yaml.safe_dump(HubLab("u", 2, 6).config(), sort_keys=False)
    doc = yaml.safe_load(text)
    doc["sites"][0]["failback_hold"] = "2s"
    cfg = parse_config(yaml.safe_dump(doc), "hub.yaml")
    h = Hub(cfg, 0.0)
    h.rebalance([1.0] * 12, 0.0)
    for s in (0, 1):
        for k in range(3):
            h.link_state(6 * s + k, "down", 1.0)
        h.link_state(6 * s, "up", 1.5)
    h.tick(4.0)
    assert [h.active_role(i) for i in (0, 1)] == ["primary", "secondary"]


def test_carry_over_keeps_existing_sites_and_adds_new_ones():
    cfg3, cfg4 = hub_cfg(3), hub_cfg(4)
    old = Hub(cfg3, 0.0)
    old.rebalance([1.0] * 18, 0.0)
    old.link_state(1, "down", 1.0)
    new = Hub(cfg4, 2.0)
    new.carry_over(old, 2.0)
    results = new.rebalance([1.0] * 24, 2.0, force=True)
    assert [tables(new)[i] for i in range(3)] == [tables(old)[i] for i in range(3)]
    assert new.state_of(1) == "down"
    moved = {p.site: n[0].extra["slots_moved"] for p, n in results if n}
    assert moved == {0: 0, 1: 0, 2: 0, 3: 256}


events = st.lists(st.tuples(st.integers(0, 17), st.sampled_from(["up", "down", "degraded"])),
                  min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(events, st.lists(st.floats(0.1, 1.0), min_size=18, max_size=18))
def test_each_site_moves_only_its_own_minimal_slots(evs, factors):
    """Property: a link event in site s changes no other site's table, and site
    s's table moves exactly the slots its new quotas require (the minimum);
    a rebalance does the same for every site at once."""
    cfg = hub_cfg(3)
    h = Hub(cfg, 0.0)
    h.rebalance([1.0] * 18, 0.0)
    now = 1.0
    for index, state in evs:
        before = tables(h)
        prog, _ = h.link_state(index, state, now)
        after = tables(h)
        site = cfg.site_of(index)
        for i in range(3):
            if i != site:
                assert after[i] == before[i]
        if prog is not None and prog.slots is not None:
            assert sum(a != b for a, b in zip(before[site], after[site])) == \
                minimal_moves(list(before[site]), list(after[site]))
        now += 1.0
    before = tables(h)
    h.rebalance(factors, now)
    after = tables(h)
    for i in range(3):
        assert sum(a != b for a, b in zip(before[i], after[i])) == \
            minimal_moves(list(before[i]), list(after[i]))


# ------------------------------------------------ SA state and probing: decided here

def tr(name: str, old: str, new: str, reason: str = "probe") -> Transition:
    return Transition(name, old, new, reason, 0.0)


def test_a_tunnel_without_sas_is_down_until_they_are_back_and_a_probe_answers():
    cfg = hub_cfg(2, 3)
    h = Hub(cfg, 0.0)
    h.rebalance([1.0] * 6, 0.0)
    name = cfg.tunnels[4].name                   # site 1's second tunnel
    prog, notes = h.sa_change(4, False, "SA deleted", 1.0)
    assert prog is not None and prog.site == 1 and h.state_of(4) == "down"
    assert [(n.type, n.reason, n.tunnel, n.extra["old"], n.extra["site"]) for n in notes
            if n.type.startswith("link")] == [("link_down", "SA deleted", name, "up", "site1")]
    assert notes[-1].type == "link_down"         # programming first, the link event reports it
    # probes cannot bring it up while it has no SAs; a probe's "down" changes nothing
    assert h.probed(4, [tr(name, "up", "down"), tr(name, "down", "up")], 2.0, "up") == []
    assert h.state_of(4) == "down"
    # SAs back: an event, still down until a probe answers
    prog, notes = h.sa_change(4, True, "SA installed", 3.0)
    assert prog is None and [(n.type, n.tunnel) for n in notes] == [("sa_installed", name)]
    assert h.state_of(4) == "down"
    assert h.probed(4, [], 3.5) == []            # a tick, no reply: nothing yet
    [(prog, notes)] = h.probed(4, [], 4.0, "up")   # the first answered probe
    assert prog is not None and prog.site == 1 and h.state_of(4) == "up"
    assert (notes[-1].type, notes[-1].reason) == ("link_up", "SA installed and probe answered")
    assert h.link_changes == 2
    # a tunnel that is down already loses its SAs: no second link_down
    h.probed(3, [tr(cfg.tunnels[3].name, "up", "down")], 5.0)
    assert h.sa_change(3, False, "SA deleted", 5.5) == (None, [])
    assert h.link_changes == 3


def test_sa_state_and_link_count_carry_over_a_reload_by_tunnel_name():
    """The reload's new controller continues the old one's SA state by tunnel
    name (indexes move) and keeps counting link changes."""
    raw = hub_raw(2, 3)
    cfg = parse_config(yaml.safe_dump(raw, sort_keys=False), "hub.yaml")
    old = Hub(cfg, 0.0)
    old.rebalance([1.0] * 6, 0.0)
    held = cfg.tunnels[1].name
    old.sa_change(1, False, "SA deleted", 1.0)
    ts = raw["sites"][0]["tunnels"]
    raw["sites"][0]["tunnels"] = ts[1:] + ts[:1]   # the held tunnel moves to another index
    new_cfg = parse_config(yaml.safe_dump(raw, sort_keys=False), "hub.yaml")
    new = Hub(new_cfg, 2.0)
    new.carry_over(old, 2.0)
    k = new_cfg.index_of(held)
    assert k != 1 and new.sa_down_of(k) and new.state_of(k) == "down"
    assert new.probed(k, [tr(held, "down", "up")], 3.0, "up") == []   # still held down
    assert new.link_changes == old.link_changes == 1
