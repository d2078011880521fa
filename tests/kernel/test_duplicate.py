"""Packet duplication in the namespace lab (issue 15): a rule with `duplicate: true`
sends each packet on its tunnel and a copy on the next-best one; the copy is
cloned on the chosen tunnel's egress (ebpf/dup.h) with the veth stand-in's
addresses rewritten, and reaches the site host. Only that class pays: a
class pinned to the same tunnel without duplication has no copy anywhere."""
from __future__ import annotations

import os
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from steerd.cli import request
from steerd.dataplane.tc import DUP_NAME
from steerd.lab.netns import ns_sh
from steerd.lab.runner import wait_for
from steerd.lab.seqflow import collect, send_flows, set_loss, start_receiver

pytestmark = pytest.mark.kernel

VOICE, VIDEO = "10.20.5.1", "10.20.6.1"
PORT = 5004
RULES = """rules:
  - name: voice
    match: {dst: 10.20.5.0/24, proto: udp}
    wan: [wan1, wan2]
    duplicate: true
  - name: video
    match: {dst: 10.20.6.0/24, proto: udp}
    wan: wan1
"""


def start(lab, start_steerd, rules: str = RULES):
    path = os.path.join(lab.run_dir, "rules.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(rules)
    proc = start_steerd(lab.config(rules_file=path))
    assert wait_for(lambda: {r["name"]: r for r in request(lab.socket, {"cmd": "rules_list"})["rules"]}
                    ["voice"].get("copy") is not None, 20)
    return proc


def dup_filter(lab, ifname: str) -> bool:
    return DUP_NAME in ns_sh(lab.gw, "tc", "filter", "show", "dev", ifname, "egress")


def scrape(lab) -> list:
    text = ns_sh(lab.gw, sys.executable, "-c",
                 "import urllib.request;print(urllib.request.urlopen("
                 "'http://127.0.0.1:9469/metrics', timeout=5).read().decode())")
    return list(text_string_to_metric_families(text))


def test_copies_reach_the_site_over_the_next_best_tunnel_and_only_that_class_pays(
        lab, start_steerd):
    start(lab, start_steerd)
    rule = {r["name"]: r for r in request(lab.socket, {"cmd": "rules_list"})["rules"]}["voice"]
    assert rule["now"] == "pri-wan1" and rule["copy"] == "pri-wan2"
    assert all(dup_filter(lab, t) for t in ("tun-p1", "tun-p2", "tun-s1"))
    # wan1 loses every packet of both classes on its way to the site (the probes pass:
    # wan1 stays up and both rules stay on it)
    set_loss(lab, "pri-wan1", [VOICE, VIDEO], 100)
    rx = start_receiver(lab, PORT)
    sent = send_flows(lab, [VOICE, VIDEO], PORT, pps=50, duration=2.0)
    got = collect(rx)
    voice, video = got.get(0, {}), got.get(1, {})
    print(f"sent {sent}; voice {voice}; video {video}")
    assert voice["unique"] == sent[0] == 100               # every packet, by its copy
    assert voice["packets"] == {"gw-p2": sent[0]}            # one copy each, on wan2
    assert video == {}                                      # lost with wan1, no copy anywhere

    # without the loss both arrive: voice twice (its tunnel and the copy), video once
    set_loss(lab, "pri-wan1", [VOICE, VIDEO], 0)
    rx = start_receiver(lab, PORT)
    sent = send_flows(lab, [VOICE, VIDEO], PORT, pps=50, duration=1.0)
    got = collect(rx)
    assert got[0]["unique"] == sent[0] and got[0]["packets"] == {"gw-p1": sent[0], "gw-p2": sent[0]}
    assert got[1]["unique"] == sent[1] and got[1]["packets"] == {"gw-p1": sent[1]}

    fams = {f.name: f for f in scrape(lab)}
    per_rule = {s.labels["rule"]: s.value for s in fams["steerd_rule_duplicated_packets"].samples
                if s.name.endswith("_total")}
    per_tunnel = {s.labels["tunnel"]: s.value
                  for s in fams["steerd_tunnel_duplicate_tx_packets"].samples
                  if s.name.endswith("_total") and s.value}
    assert per_rule == {"voice": 3 * 50} and per_tunnel == {"pri-wan2": 3 * 50}


def test_copy_follows_the_next_best_tunnel_and_stops_without_one(lab, start_steerd):
    """The copy tunnel is re-decided like the rule's own: wan2 down -> copies on the
    site's best other tunnel (wan3); a rule that no longer duplicates (rules apply)
    detaches the egress filter: no cost left on any tunnel."""
    start(lab, start_steerd)
    set_loss(lab, "pri-wan2", [], 0)
    ns_sh(lab.site, "ip", "link", "set", "gw-p2", "down")
    assert wait_for(lambda: {r["name"]: r for r in request(lab.socket, {"cmd": "rules_list"})["rules"]}
                    ["voice"].get("copy") == "pri-wan3", 20)
    rx = start_receiver(lab, PORT)
    sent = send_flows(lab, [VOICE], PORT, pps=50, duration=1.0)
    got = collect(rx)
    assert got[0]["packets"] == {"gw-p1": sent[0], "gw-p3": sent[0]}

    path = os.path.join(lab.run_dir, "plain.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(RULES.replace("    duplicate: true\n", ""))
    out = request(lab.socket, {"cmd": "rules_apply", "path": path,
                               "text": open(path, encoding="utf-8").read(), "dry_run": False})
    assert out["ok"], out
    assert not any(dup_filter(lab, t) for t in ("tun-p1", "tun-p2", "tun-s1"))
    rx = start_receiver(lab, PORT)
    sent = send_flows(lab, [VOICE], PORT, pps=50, duration=1.0)
    assert collect(rx)[0]["packets"] == {"gw-p1": sent[0]}


def test_a_recreated_tunnel_interface_gets_its_copies_back(lab, start_steerd):
    """An IKE restart can recreate an XFRM interface (new ifindex, no filters): the
    link event puts the duplication filter back and the entry names the new interface."""
    start(lab, start_steerd)
    lab.recreate("pri-wan1")
    assert wait_for(lambda: dup_filter(lab, "tun-p1"), 5), "no duplication filter on the new tun-p1"

    def voice():
        return {r["name"]: r for r in request(lab.socket, {"cmd": "rules_list"})["rules"]}["voice"]
    assert wait_for(lambda: voice()["now"] == "pri-wan1" and voice()["copy"] == "pri-wan2", 30), voice()
    rx = start_receiver(lab, PORT)
    sent = send_flows(lab, [VOICE], PORT, pps=50, duration=1.0)
    assert collect(rx)[0]["packets"] == {"gw-p1": sent[0], "gw-p2": sent[0]}
