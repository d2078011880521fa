"""Issue 8 through the daemon: caps are installed from the config with the
classifier's egress program, follow reloads, and disappear with --cleanup."""
from __future__ import annotations

import copy
import time

import pytest

from steerd.cli import request_lines
from steerd.lab.netns import ns_sh

pytestmark = pytest.mark.kernel


def htb(lab, ifname: str) -> str:
    return ns_sh(lab.gw, "tc", "class", "show", "dev", ifname)


def test_caps_follow_config_reload_and_cleanup(lab, start_steerd):
    cfg = lab.config()
    cfg["tunnels"][0]["bandwidth"]["cap"] = 20
    steerd = start_steerd(cfg)
    classes = htb(lab, "tun-p1")
    assert "class htb 5e:1 root" in classes and "rate 20Mbit ceil 20Mbit" in classes
    assert htb(lab, "tun-p2") == ""            # not capped: no shaper
    assert "qos_classify" in ns_sh(lab.gw, "tc", "filter", "show", "dev", "tun-p1")
    st = {t["name"]: t for t in steerd.status()["tunnels"]}
    assert st["pri-wan1"]["cap_mbps"] == 20 and st["pri-wan2"]["cap_mbps"] is None

    new = copy.deepcopy(cfg)
    new["tunnels"][0]["bandwidth"]["cap"] = 30
    new["tunnels"][1]["bandwidth"]["cap"] = True   # = its down_mbps, 50
    lab.write_config(new)
    assert next(request_lines(lab.socket, {"cmd": "reload"}))["ok"]
    time.sleep(0.2)
    assert "rate 30Mbit ceil 30Mbit" in htb(lab, "tun-p1")
    assert "rate 50Mbit ceil 50Mbit" in htb(lab, "tun-p2")

    steerd.stop()
    out = steerd.cleanup()
    assert "shapers=2" in out, out
    for ifname in ("tun-p1", "tun-p2"):
        assert htb(lab, ifname) == ""
        assert "5e:" not in ns_sh(lab.gw, "tc", "qdisc", "show", "dev", ifname)
