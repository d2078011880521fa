"""Draining a tunnel with real packets (issue 17, item 13): `steerctl tunnel
drain` moves its live flows as a link down would and nothing else, a restarted
steerd keeps it drained, `undrain` gives it new flows again."""
from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from steerd.cli import main as steerctl
from steerd.lab.runner import send, split

pytestmark = pytest.mark.kernel


def ctl(lab, *args: str):
    return CliRunner().invoke(steerctl, ["--socket", lab.socket, *args])


def test_drain_moves_its_flows_survives_a_restart_and_undrain_restores(lab, start_steerd, receiver):
    steerd = start_steerd()
    sender = send(lab, 600, duration=6.0, pps=6000, background=True)
    time.sleep(1.5)
    before = receiver.snapshot()
    res = ctl(lab, "tunnel", "drain", "pri-wan1")
    assert res.exit_code == 0, res.output
    time.sleep(0.5)
    receiver.reset()
    time.sleep(1.5)
    after = receiver.snapshot()
    sender.communicate(timeout=30)
    on_p1 = [f for f, ifs in before.items() if list(ifs) == ["gw-p1"]]
    others = [f for f, ifs in before.items() if "gw-p1" not in ifs]
    assert on_p1 and others
    assert all("gw-p1" not in after[f] for f in on_p1)                # all moved...
    assert all(set(after[f]) == set(before[f]) for f in others)        # ...and only they
    ev = [e for e in steerd.events() if e["type"] == "link_down"]
    assert ev and (ev[-1]["tunnel"], ev[-1]["reason"]) == ("pri-wan1", "drained")

    steerd.stop()                                       # a restart keeps it drained
    steerd = start_steerd()
    receiver.reset()
    send(lab, 300, duration=1.0, first_flow=10000)
    time.sleep(0.3)
    fresh = split({f: v for f, v in receiver.snapshot().items() if f >= 10000})
    assert "gw-p1" not in fresh and sum(fresh.values()) == 300, fresh
    p1 = next(t for t in steerd.status()["tunnels"] if t["name"] == "pri-wan1")
    assert p1["drained"] is True and p1["share"] == 0

    assert ctl(lab, "tunnel", "undrain", "pri-wan1").exit_code == 0
    receiver.reset()
    send(lab, 300, duration=1.0, first_flow=20000)
    time.sleep(0.3)
    fresh = split({f: v for f, v in receiver.snapshot().items() if f >= 20000})
    assert fresh.get("gw-p1", 0) > 100, fresh          # its share (100 of 175) again
    ev = [e for e in steerd.events() if e["type"] == "link_up"]
    assert ev and (ev[-1]["tunnel"], ev[-1]["reason"]) == ("pri-wan1", "undrained")
