"""Hub mode through the daemon on the fake data path (no root): status with
`sites`, `--site`, the per-site summary table, per-site programming and a
reload that adds a site without touching the others' slot rows."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from steerd.cli import main as steerctl
from steerd.cli import request, request_lines
from steerd.lab.topology import HubLab

from test_control import running_daemon


@pytest.fixture
def hub(tmp_path):
    lab = HubLab("u", 4, 6)
    for d in running_daemon(lab.config(sites=range(3)), tmp_path):
        d.lab = lab
        yield d


def test_status_has_sites_and_each_tunnel_its_site(hub):
    st = request(hub.cfg.control_socket, {"cmd": "status"})["status"]
    assert "site" not in st and "active_ha_role" not in st      # more than one site
    assert [(s["site"], s["active_ha_role"], len(s["tunnels"])) for s in st["sites"]] == \
        [("site0", "primary", 6), ("site1", "primary", 6), ("site2", "primary", 6)]
    assert [t["site"] for t in st["tunnels"]] == ["site0"] * 6 + ["site1"] * 6 + ["site2"] * 6
    # each site's weights are its own: its primaries sum to 1
    for s in ("site0", "site1", "site2"):
        assert abs(sum(t["weight"] for t in st["tunnels"] if t["site"] == s) - 1) < 1e-3
        assert abs(sum(t["share"] for t in st["tunnels"] if t["site"] == s) - 1) < 1e-3


def test_status_site_filter_and_tables(hub):
    sock = hub.cfg.control_socket
    one = request(sock, {"cmd": "status", "site": "site2"})["status"]
    assert one["site"] == "site2" and one["active_ha_role"] == "primary"
    assert {t["site"] for t in one["tunnels"]} == {"site2"}
    bad = next(request_lines(sock, {"cmd": "status", "site": "nope"}))
    assert not bad["ok"] and "nope" in bad["error"]
    out = CliRunner().invoke(steerctl, ["--socket", sock, "status"]).output
    assert out.startswith("3 sites: 3 on primary, 0 on secondary   tunnels: 18/18 up")
    assert "SITE" in out and "site1" in out and "s1-pri-wan1" not in out
    out = CliRunner().invoke(steerctl, ["--socket", sock, "status", "--site", "site1"]).output
    assert out.startswith("site site1") and "s1-pri-wan1" in out and "s0-pri-wan1" not in out


def test_one_sites_failover_programs_only_that_site(hub):
    slots_before = {k: list(v.tunnel) for k, v in hub.dp.slots.items()}
    for i in range(6, 9):     # site1's primaries
        prog, notes = hub.controller.link_state(i, "down", 1.0)
        hub.apply(prog, notes)
    assert hub.controller.active_role(1) == "secondary"
    after = {k: list(v.tunnel) for k, v in hub.dp.slots.items()}
    assert after[0] == slots_before[0] and after[2] == slots_before[2]
    assert set(after[1]) == {9, 10, 11}          # site id 1: tunnel ids 6..11, secondaries 9..11
    ev = [e.as_dict() for e in hub.events.since(0) if e.type == "ha_failover"]
    assert [e["site"] for e in ev] == ["site1"]


def test_reload_adding_a_site_keeps_the_others(hub):
    before = {k: (list(v.tunnel), list(v.ver)) for k, v in hub.dp.slots.items()}
    with open(hub.cfg.path, "w", encoding="utf-8") as f:
        yaml.safe_dump(hub.lab.config(control_socket=hub.cfg.control_socket,
                                      metrics={"listen": hub.cfg.metrics_listen}), f, sort_keys=False)
    reply = next(request_lines(hub.cfg.control_socket, {"cmd": "reload"}))
    assert reply["ok"], reply
    after = {k: (list(v.tunnel), list(v.ver)) for k, v in hub.dp.slots.items()}
    assert [after[k] for k in range(3)] == [before[k] for k in range(3)]   # not a slot, not a version
    assert set(after[3][0]) == {18, 19, 20}


HUB_RULES = """
rules:
  - name: voice
    match: {proto: udp, dst_port: 5060}
    wan: wan2
  - name: backup-only1
    site: site1
    match: {proto: tcp, dst_port: 873}
    wan: wan3
    fallback: drop
"""


def test_rules_list_explains_every_site(hub):
    sock = hub.cfg.control_socket
    assert request(sock, {"cmd": "rules_apply", "text": HUB_RULES, "path": "hub.yaml"})["ok"]
    hub.apply(*hub.controller.link_state(1, "down", 1.0))       # site0's wan2
    rs = {r["name"]: r for r in request(sock, {"cmd": "rules_list"})["rules"]}
    voice = rs["voice"]
    assert [(e["site"], e["now"], e["decision"]) for e in voice["sites"]] == [
        ("site0", "spread", "fallback"), ("site1", "s1-pri-wan2", "pinned"),
        ("site2", "s2-pri-wan2", "pinned")]
    assert voice["sites"][0]["why"] == "wan2 down; fallback auto"
    assert [(g["now"], g["sites"]) for g in voice["groups"]] == [
        ("wan2", ["site1", "site2"]), ("spread", ["site0"])]
    assert (voice["now"], voice["decision"]) == ("wan2", "pinned")     # the largest group
    only1 = rs["backup-only1"]
    assert [(e["site"], e["now"]) for e in only1["sites"]] == [("site1", "s1-pri-wan3")]
    assert only1["now"] == "s1-pri-wan3" and only1["why"] == "wan3 is up"

    at0 = {r["name"]: r for r in request(sock, {"cmd": "rules_list", "site": "site0"})["rules"]}
    assert (at0["voice"]["now"], at0["voice"]["why"]) == ("spread", "wan2 down; fallback auto")
    assert at0["backup-only1"]["sites"] == [] and at0["backup-only1"]["decision"] == "not here"
    bad = next(request_lines(sock, {"cmd": "rules_list", "site": "nope"}))
    assert not bad["ok"] and "nope" in bad["error"]

    out = CliRunner().invoke(steerctl, ["--socket", sock, "rules", "list"]).output
    lines = out.splitlines()
    voice_line = next(i for i, ln in enumerate(lines) if " voice " in ln)
    assert "wan2 at 2/3 sites" in lines[voice_line] and "wan2 is up" in lines[voice_line]
    assert "spread at 1/3 sites: site0" in lines[voice_line + 1]
    assert "wan2 down; fallback auto" in lines[voice_line + 1]
    out = CliRunner().invoke(steerctl, ["--socket", sock, "rules", "list", "--site", "site1"]).output
    assert "s1-pri-wan2" in out and "s1-pri-wan3" in out and "sites" not in out
