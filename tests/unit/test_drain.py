"""Draining a tunnel for maintenance (steerctl tunnel drain/undrain): the
controller's decision, the record that keeps it across restarts, and the
command through a daemon on the fake data path (no root)."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from steerd import drain
from steerd.cli import main as steerctl
from steerd.config import parse_config
from steerd.controller import Controller, Hub
from steerd.lab.topology import HubLab, Lab

from test_control import running_daemon


def cfg(**top):
    return parse_config(yaml.safe_dump(Lab("u").config(**top), sort_keys=False), "lab.yaml")


def started() -> Controller:
    c = Controller(cfg(), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    return c


# ------------------------------------------------------------------ the decision

def test_drain_moves_the_tunnels_flows_as_a_link_down_would():
    down, drained = started(), started()
    by_link = down.link_state(1, "down", now=1.0)[0]
    prog, notes = drained.drain(1, True, now=1.0)
    assert prog.slots == by_link.slots and prog.usable == by_link.usable
    assert prog.wan_tunnels["wan2"] is None
    assert (notes[0].type, notes[0].reason, notes[0].tunnel) == ("link_down", "drained", "pri-wan2")
    assert notes[0].extra == {"old": "up", "new": "down"}
    assert [n.reason for n in notes if n.type == "rebalance"] == ["pri-wan2 drained"]
    assert drained.shares()[1] == 0.0


def test_undrain_brings_it_back_as_a_link_up():
    c = started()
    c.drain(1, True, now=1.0)
    prog, notes = c.drain(1, False, now=2.0)
    assert prog.usable[1] and c.shares()[1] > 0.25
    assert (notes[0].type, notes[0].reason) == ("link_up", "undrained")


def test_probing_while_drained_changes_nothing_and_undrain_uses_what_it_says():
    c = started()
    c.drain(1, True, now=1.0)
    assert c.link_state(1, "down", now=2.0) == (None, [])
    assert c.link_state(1, "up", now=3.0) == (None, [])
    c.link_state(1, "down", now=4.0)
    prog, notes = c.drain(1, False, now=5.0)          # still down by probing: stays out
    assert c.states[1] == "down" and not any(n.type == "link_up" for n in notes)
    assert c.link_state(1, "up", now=6.0)[0].usable[1]   # and comes back when probing says so


def test_draining_every_primary_fails_over_and_undrain_fails_back_after_the_hold():
    c = Controller(cfg(failback_hold="3s"), now=0.0)
    c.rebalance([1.0] * 6, now=0.0)
    notes = []
    for i in (0, 1, 2):
        notes += c.drain(i, True, now=1.0)[1]
    assert c.ha.active == "secondary" and "ha_failover" in [n.type for n in notes]
    assert c.shares()[3:] != [0.0, 0.0, 0.0] and c.shares()[:3] == [0.0, 0.0, 0.0]
    c.drain(2, False, now=2.0)
    assert c.ha.active == "secondary"                 # the failback hold applies
    assert "ha_failback" in [n.type for n in c.tick(now=5.5)[1]]


def test_drain_twice_or_undrain_a_tunnel_in_service_is_a_no_op():
    c = started()
    assert c.drain(0, False, now=1.0) == (None, [])
    c.drain(0, True, now=1.0)
    assert c.drain(0, True, now=2.0) == (None, [])


# ------------------------------------------------------------------ the record

def test_record_round_trip_and_absent_file(tmp_path):
    path = drain.path_in(str(tmp_path / "state"))
    assert drain.load(path) == set()
    drain.save(path, {"pri-wan2", "sec-wan1"})
    assert drain.load(path) == {"pri-wan2", "sec-wan1"}
    assert json.loads(open(path).read()) == {"drained": ["pri-wan2", "sec-wan1"]}


# ------------------------------------------------------------------ through the daemon

def run_daemon(tmp_path):
    """A daemon on the fake data path with its state in tmp_path/state, and
    how to stop it."""
    gen = running_daemon(Lab("u").config(), tmp_path)
    return next(gen), lambda: next(gen, None)


def ctl(tmp_path, *args):
    return CliRunner().invoke(steerctl, ["--socket", str(tmp_path / "s.sock"), *args])


def test_drain_command_persists_across_a_restart_until_undrained(tmp_path):
    d, stop = run_daemon(tmp_path)
    try:
        res = ctl(tmp_path, "tunnel", "drain", "pri-wan1")
        assert res.exit_code == 0 and "pri-wan1: drained" in res.output, res.output
        st = json.loads(ctl(tmp_path, "status", "--json").output)
        p1 = next(t for t in st["tunnels"] if t["name"] == "pri-wan1")
        assert p1["drained"] is True and p1["share"] == 0 and p1["state"] == "down"
        assert "drained" in ctl(tmp_path, "status").output
        ev = [e.as_dict() for e in d.events.since() if e.type == "link_down"]
        assert ev and ev[-1]["reason"] == "drained" and ev[-1]["tunnel"] == "pri-wan1"
        bad = ctl(tmp_path, "tunnel", "drain", "pri-wan9")
        assert bad.exit_code != 0 and "no tunnel 'pri-wan9'" in bad.output
    finally:
        stop()

    d, stop = run_daemon(tmp_path)                     # a restart: still drained
    try:
        assert d.controller.shares()[0] == 0.0 and d.controller.drained_of(0)
        assert ctl(tmp_path, "tunnel", "undrain", "pri-wan1").exit_code == 0
        assert d.controller.shares()[0] > 0.5
    finally:
        stop()
    assert drain.load(drain.path_in(str(tmp_path / "state"))) == set()

    d, stop = run_daemon(tmp_path)                     # and undrained stays undrained
    try:
        assert not d.controller.drained_of(0) and d.controller.shares()[0] > 0.5
    finally:
        stop()


def test_state_dir_must_be_absolute():
    with pytest.raises(Exception, match="state_dir.*absolute path"):
        cfg(state_dir="relative/dir")


# ------------------------------------------------------------------ hub mode

def hub_raw(tmp_path, sites: int = 2) -> dict:
    return HubLab("u", sites, 6).config(state_dir=str(tmp_path / "state"))


def test_hub_drain_moves_only_the_tunnels_own_site():
    """Two sites: draining a tunnel of site0 reprograms site0 only, away from
    that tunnel; site1's slot table does not move."""
    c = parse_config(yaml.safe_dump(HubLab("u", 2, 6).config(), sort_keys=False), "hub.yaml")
    h = Hub(c, 0.0)
    h.rebalance([1.0] * 12, 0.0)
    before = [list(s.slots) for s in h.sites]
    prog, notes = h.drain(c.index_of("s0-pri-wan2"), True, 1.0)
    assert prog is not None and prog.site == 0 and 1 not in prog.slots
    assert (notes[0].type, notes[0].reason, notes[0].extra["site"]) == ("link_down", "drained", "site0")
    assert [list(s.slots) for s in h.sites][1] == before[1]
    assert h.drained_of(1) and not h.drained_of(7) and h.state_of(1) == "down"
    assert h.shares()[1] == 0.0 and h.shares()[7] > 0


def test_hub_carry_over_keeps_a_drained_tunnel_drained_even_moved_to_another_site():
    c2 = parse_config(yaml.safe_dump(HubLab("u", 2, 6).config(), sort_keys=False), "hub.yaml")
    old = Hub(c2, 0.0)
    old.rebalance([1.0] * 12, 0.0)
    old.link_state(7, "degraded", 0.5)
    old.drain(7, True, 1.0)                          # s1-pri-wan2, probed degraded
    doc = HubLab("u", 3, 6).config()
    doc["sites"][2]["tunnels"][1] = doc["sites"][1]["tunnels"].pop(1)   # to site2, in place of its own
    doc["sites"][0]["tunnels"][1]["name"] = "renamed"
    c3 = parse_config(yaml.safe_dump(doc, sort_keys=False), "hub.yaml")
    new = Hub(c3, 2.0)
    new.carry_over(old, 2.0)
    moved = c3.index_of("s1-pri-wan2")
    assert c3.site_of(moved) == 2 and new.drained_of(moved) and new.state_of(moved) == "down"
    assert [k for k in range(len(c3.tunnels)) if new.drained_of(k)] == [moved]
    same = Hub(c2, 2.0)                              # same config: measured state kept too
    same.carry_over(old, 2.0)
    assert same.drained_of(7) and same.measured_of(7) == "degraded"
    assert same.drain(7, False, 3.0)[1][0].reason == "undrained" and same.state_of(7) == "degraded"


def test_hub_daemon_drain_survives_reload_and_restart(tmp_path):
    gen = running_daemon(hub_raw(tmp_path), tmp_path)
    d = next(gen)
    try:
        before = {k: list(v.tunnel) for k, v in d.dp.slots.items()}
        res = ctl(tmp_path, "tunnel", "drain", "s1-pri-wan1")
        assert res.exit_code == 0, res.output
        after = {k: list(v.tunnel) for k, v in d.dp.slots.items()}
        assert after[0] == before[0]                 # the other site: not a slot moved
        assert 6 in before[1] and 6 not in after[1]  # site id 1, position 0
        with open(d.cfg.path, "w", encoding="utf-8") as f:
            yaml.safe_dump(dict(hub_raw(tmp_path), control_socket=d.cfg.control_socket,
                                metrics={"listen": d.cfg.metrics_listen}), f, sort_keys=False)
        assert ctl(tmp_path, "reload").exit_code == 0
        st = json.loads(ctl(tmp_path, "status", "--json").output)
        row = next(t for t in st["tunnels"] if t["name"] == "s1-pri-wan1")
        assert row["drained"] is True and row["state"] == "down" and row["share"] == 0
        assert 6 not in d.dp.slots[1].tunnel
    finally:
        next(gen, None)   # stops the daemon
    gen = running_daemon(hub_raw(tmp_path), tmp_path)   # a restart
    d = next(gen)
    try:
        k = d.cfg.index_of("s1-pri-wan1")
        assert d.controller.drained_of(k) and 6 not in d.dp.slots[1].tunnel
        assert ctl(tmp_path, "tunnel", "undrain", "s1-pri-wan1").exit_code == 0
        assert not d.controller.drained_of(k) and 6 in d.dp.slots[1].tunnel
    finally:
        next(gen, None)   # stops the daemon


def test_reload_that_removes_a_drained_tunnel_forgets_its_drain_on_disk(tmp_path):
    """A drained tunnel taken out of the config and put back later comes back
    in service after a reload and after a restart alike (the record on disk
    follows the running daemon, not the tunnel's past)."""
    gen = running_daemon(hub_raw(tmp_path), tmp_path)
    d = next(gen)
    record = drain.path_in(str(tmp_path / "state"))
    try:
        assert ctl(tmp_path, "tunnel", "drain", "s1-pri-wan1").exit_code == 0
        assert drain.load(record) == {"s1-pri-wan1"}
        doc = dict(hub_raw(tmp_path), control_socket=d.cfg.control_socket,
                   metrics={"listen": d.cfg.metrics_listen})
        doc["sites"] = [doc["sites"][0]]             # site s1 and its tunnels go
        with open(d.cfg.path, "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        assert ctl(tmp_path, "reload").exit_code == 0
        assert drain.load(record) == set()
    finally:
        next(gen, None)
