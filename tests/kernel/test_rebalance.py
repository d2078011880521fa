"""Issue 5 in the lab: lowering one tunnel's weight moves only the flows the
new weights need, and none of the tunnels that gained share."""
from __future__ import annotations

import time

import pytest

from steerd.lab.runner import send

pytestmark = pytest.mark.kernel


def test_weight_drop_moves_the_minimum_of_live_flows(lab, start_steerd, receiver):
    steerd = start_steerd()
    sender = send(lab, 2000, duration=12.0, pps=8000, background=True)
    time.sleep(3.0)
    before = receiver.snapshot()
    where = {f: next(iter(ifs)) for f, ifs in before.items() if len(ifs) == 1}
    assert len(where) == 2000
    n = len(where)
    on_p1 = sum(1 for i in where.values() if i == "gw-p1")
    # reload with pri-wan1 at 80 Mbit/s instead of 100: its weight falls 100 -> 80
    lab.write_config(lab.config(bandwidths={1: 80, 2: 50, 3: 25}))
    reply = steerd_reload(steerd)
    assert reply["ok"], reply
    time.sleep(2.0)
    receiver.reset()
    time.sleep(2.0)
    after = receiver.snapshot()
    sender.communicate(timeout=30)
    now = {f: max(ifs, key=ifs.get) for f, ifs in after.items()}
    moved = {f for f in where if now.get(f) != where[f]}
    # flows of the tunnels that gained share all stayed
    assert not [f for f in moved if where[f] != "gw-p1"]
    ev = [e for e in steerd.events() if e["type"] == "rebalance"][-1]
    assert ev["flows_moved"] == len(moved) and ev["slots_moved"] > 0
    st = {t["name"]: t for t in steerd.status()["tunnels"]}
    assert abs(st["pri-wan1"]["share"] - 80 / 155) < 0.001
    # The excess of live flows over pri-wan1's new share of the slots is what
    # must move (selection.build_slots picks the slots by their live flows): one
    # flow of rounding either way, not more (the slot quota, whole flows).
    minimum = on_p1 - st["pri-wan1"]["share"] * n
    assert abs(len(moved) - minimum) <= 1, (len(moved), minimum)
    live = st["pri-wan1"]["flows"] + st["pri-wan2"]["flows"] + st["pri-wan3"]["flows"]
    assert live == n


def steerd_reload(steerd) -> dict:
    from steerd.cli import request_lines
    return next(request_lines(steerd.lab.socket, {"cmd": "reload"}))


def test_reload_that_removes_a_tunnel_moves_no_live_flow(lab, start_steerd, receiver):
    """Removing sec-wan1 renumbers the tunnels after it (marks, tables): the
    data path is re-laid out in place and no primary flow moves."""
    from steerd.lab.netns import ns_sh
    steerd = start_steerd()
    sender = send(lab, 1000, duration=8.0, pps=5000, background=True)
    time.sleep(2.0)
    snap = receiver.snapshot()
    before = {f: next(iter(ifs)) for f, ifs in snap.items()}
    cfg = lab.config()
    cfg["tunnels"] = [t for t in cfg["tunnels"] if t["name"] != "sec-wan1"]
    lab.write_config(cfg)
    reply = steerd_reload(steerd)
    assert reply["ok"] and "updated" in reply["summary"], reply
    time.sleep(1.0)
    receiver.reset()
    time.sleep(2.0)
    after = receiver.snapshot()
    sender.communicate(timeout=30)
    moved = {f: (snap[f], after[f]) for f in before if f in after and list(after[f]) != [before[f]]}
    assert not moved, (f"{len(moved)} flows moved (before, after): {list(moved.items())[:5]}; events: "
                       f"{[(e['type'], e.get('tunnel'), e.get('reason')) for e in steerd.events()]}")
    assert len(after) == 1000
    rules = ns_sh(lab.gw, "ip", "rule", "show")
    assert "lookup 2106" not in rules and "lookup 2105" in rules
    assert [t["name"] for t in steerd.status()["tunnels"]] == [t["name"] for t in cfg["tunnels"]]
    routes = ns_sh(lab.gw, "ip", "route", "show", "table", "2104")
    assert "dev tun-s2" in routes
