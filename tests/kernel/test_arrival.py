"""reply_on_arrival_tunnel in the namespace lab (issue 15): flows opened from the
site, which sends them up tunnel 2 (a source-based route there), get every reply
back on tunnel 2; with the option off the replies follow the weights (spread
over the three primaries, 100:50:25); a rule still decides first."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from steerd.cli import request
from steerd.lab.netns import ns_popen, ns_sh
from steerd.lab.seqflow import opened_from_site
from steerd.lab.topology import CORE4

pytestmark = pytest.mark.kernel

SRC = "10.20.200.0/24"      # the site's sources whose flows go up tunnel 2
FLOWS, COUNT = 60, 5
ECHO_PORT = 7007


@pytest.fixture
def site_via_p2(lab):
    """The site sends what comes from SRC up tunnel 2; core echoes every datagram."""
    ns_sh(lab.site, "ip", "rule", "add", "from", SRC, "lookup", "200")
    ns_sh(lab.site, "ip", "route", "add", "10.99.0.0/24", "dev", "gw-p2", "table", "200")
    echo = ns_popen(lab.core, [sys.executable, "-m", "steerd.lab.seqflow", "echo",
                               "--port", str(ECHO_PORT)], stdout=subprocess.DEVNULL)
    yield
    echo.kill()
    echo.wait()


def start(lab, start_steerd, rules: str | None = None, **top):
    if rules is not None:
        path = os.path.join(lab.run_dir, "rules.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(rules)
        top["rules_file"] = path
    return start_steerd(lab.config(**top))


def replies(lab) -> tuple[Counter, dict[int, dict[str, int]]]:
    """Where each flow's replies came back (flows whose replies all took one tunnel)."""
    per_flow = opened_from_site(lab, SRC, FLOWS, CORE4, ECHO_PORT, COUNT)
    assert len(per_flow) == FLOWS and all(sum(v.values()) == COUNT for v in per_flow.values()), per_flow
    return Counter(next(iter(v)) if len(v) == 1 else "mixed" for v in per_flow.values()), per_flow


def test_replies_go_back_on_the_arrival_tunnel(lab, start_steerd, site_via_p2):
    start(lab, start_steerd, reply_on_arrival_tunnel=True)
    assert "steerd-arrival" in ns_sh(lab.gw, "tc", "filter", "show", "dev", "tun-p2", "ingress")
    split, _ = replies(lab)
    print(f"option on: replies per tunnel {dict(split)}")
    assert split == Counter({"gw-p2": FLOWS})               # 100 % on the arrival tunnel
    # the replies' flows are kept on tunnel 2 in the affinity table, not counted as slot load
    st = request(lab.socket, {"cmd": "status"})["status"]
    assert {t["name"]: t for t in st["tunnels"]}["pri-wan2"]["flows"] >= FLOWS


def test_without_the_option_replies_follow_the_weights(lab, start_steerd, site_via_p2):
    start(lab, start_steerd)
    assert "steerd-arrival" not in ns_sh(lab.gw, "tc", "filter", "show", "dev", "tun-p2", "ingress")
    split, _ = replies(lab)
    print(f"option off: replies per tunnel {dict(split)}")
    assert "mixed" not in split and set(split) == {"gw-p1", "gw-p2", "gw-p3"}
    assert split["gw-p1"] > split["gw-p2"] > 0 and split["gw-p2"] < FLOWS * 0.6


def test_a_rule_still_pins_the_replies(lab, start_steerd, site_via_p2):
    rules = "rules:\n  - name: pinned\n    match: {dst: 10.20.200.0/27}\n    wan: wan3\n"
    start(lab, start_steerd, rules, reply_on_arrival_tunnel=True)
    _, per_flow = replies(lab)
    pinned = Counter(next(iter(v)) for f, v in per_flow.items() if f < 31)     # .1 .. .31
    others = Counter(next(iter(v)) for f, v in per_flow.items() if f >= 31)
    print(f"rule on .1-.31: {dict(pinned)}; the rest: {dict(others)}")
    assert pinned == Counter({"gw-p3": 31}) and others == Counter({"gw-p2": FLOWS - 31})
