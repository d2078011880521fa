"""Duplicated rules (issue 15): parsed and refused at their line, their own wan-table
entry, where the copy goes (the next-best tunnel that is up), when a
`when_loss_above` rule copies, and the daemon's wan-table value for a copying
rule (DUP_FLAG | an entry of dup_tab; a plain tunnel id otherwise)."""
from __future__ import annotations

import textwrap

import pytest

from steerd.abi import DUP_FLAG
from steerd.dataplane.duplicate import Link, entry_for
from steerd.health import LinkStats
from steerd.rules import compile_rules, parse_rules
from steerd.sla import DUP_OFF_HOLD, Candidate, QualityPlan, TunnelView, choose_copy
from steerd.yamlsrc import ValidationError

WANS = {"wan1", "wan2", "wan3"}


def parse(text: str):
    return parse_rules(textwrap.dedent(text), "rules.yaml", WANS, sla_classes={})


def stats(rtt_ms: float, loss: float = 0.0) -> LinkStats:
    return LinkStats(loss, rtt_ms / 1000, rtt_ms / 1000, 0.001, 10)


def test_duplicate_parses_and_shows():
    rs = parse("""
        rules:
          - {name: voice, match: {proto: udp}, wan: [wan1, wan2], duplicate: true}
          - {name: rtp, match: {proto: udp}, wan: wan1, duplicate: {when_loss_above: 1%}}
          - {name: web, match: {proto: tcp}, wan: wan2, duplicate: true, allow_tcp: true}
          - {name: any, wan: wan3, duplicate: false}
    """)
    voice, rtp, web, plain = rs.rules
    assert (voice.duplicate, voice.dup_loss_above) == (True, None)
    assert (rtp.duplicate, rtp.dup_loss_above) == (True, 1.0)
    assert web.duplicate and web.allow_tcp
    assert not plain.duplicate and not plain.quality and plain.wan_key == "wan3"
    # each duplicated rule has its own entry (copies are counted per rule)
    assert voice.wan_key == "@wan1,wan2#dup:voice" and rtp.wan_key == "@wan1#dup:rtp"
    assert rtp.quality
    assert voice.as_dict()["duplicate"] is True
    assert rtp.as_dict()["duplicate"] == {"when_loss_above": "1%"}
    assert web.as_dict()["allow_tcp"] is True
    assert rtp.summary().endswith("-> wan1 duplicate when loss > 1% (fallback auto)")
    assert set(compile_rules(rs).wan_ids) == {voice.wan_key, rtp.wan_key, web.wan_key, "wan3"}
    # the canonical form parses back to the same rule
    again = parse_rules(f"rules: [{rtp.as_dict()}]".replace("'", '"'), "r", WANS, sla_classes={})
    assert again.rules[0] == rtp


BAD = [
    ("TCP-only", "rules:\n  - name: a\n    match: {proto: tcp}\n    wan: wan1\n"
                 "    duplicate: true  #!\n", "rules[0].duplicate", "allow_tcp: true"),
    ("TCP-only, conditional", "rules:\n  - name: a\n    match: {proto: [tcp]}\n    wan: wan1\n"
                              "    duplicate: {when_loss_above: 2%}  #!\n",
     "rules[0].duplicate", "real-time UDP"),
    ("not a bool", "rules:\n  - name: a\n    wan: wan1\n    duplicate: yes please  #!\n",
     "rules[0].duplicate", "when_loss_above"),
    ("unknown key", "rules:\n  - name: a\n    wan: wan1\n    duplicate: {when_loss: 1%}  #!\n",
     "rules[0].duplicate", "when_loss_above"),
    ("threshold 0", "rules:\n  - name: a\n    wan: wan1\n    duplicate:\n"
                    "      when_loss_above: 0%  #!\n",
     "rules[0].duplicate.when_loss_above", "above 0 and below 100"),
    ("threshold text", "rules:\n  - name: a\n    wan: wan1\n    duplicate:\n"
                       "      when_loss_above: lots  #!\n",
     "rules[0].duplicate.when_loss_above", "such as 1%"),
    ("allow_tcp alone", "rules:\n  - name: a\n    wan: wan1\n    allow_tcp: true  #!\n",
     "rules[0].allow_tcp", "only with duplicate"),
    ("allow_tcp not a bool", "rules:\n  - name: a\n    wan: wan1\n    duplicate: true\n"
                             "    allow_tcp: 1  #!\n", "rules[0].allow_tcp", "true or false"),
]


@pytest.mark.parametrize("text,key,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_duplicate_is_refused_at_its_line(text, key, fragment):
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if "#!" in t]
    with pytest.raises(ValidationError) as exc:
        parse_rules(text, "rules.yaml", WANS, sla_classes={})
    (p,) = exc.value.problems
    assert (p.file, p.line, p.key) == ("rules.yaml", line, key)
    assert fragment in p.expected
    assert "rules.yaml" in str(exc.value) and f":{line}" in str(exc.value)


def test_udp_and_tcp_together_is_not_tcp_only():
    rs = parse("rules: [{name: a, match: {proto: [tcp, udp]}, wan: wan1, duplicate: true}]")
    assert rs.rules[0].duplicate


def cand(wan, tunnel, up=True, in_sla=True, mos=4.4):
    return Candidate(wan, tunnel, f"t{tunnel}", up, in_sla, mos)


@pytest.mark.parametrize("listed,others,chosen,want", [
    # the rule's next listed WAN that is up and in its SLA
    ([cand("wan1", 0), cand("wan2", 1), cand("wan3", 2)], [], 0, 1),
    ([cand("wan1", 0), cand("wan2", 1, up=False), cand("wan3", 2)], [], 0, 2),
    ([cand("wan1", 0), cand("wan2", 1, in_sla=False), cand("wan3", 2)], [], 0, 2),
    # chosen is not the first (first out of SLA): the first is still a copy candidate
    ([cand("wan1", 0, in_sla=False, mos=3.0), cand("wan2", 1)], [], 1, 0),
    # none in the SLA: the best MOS
    ([cand("wan1", 0), cand("wan2", 1, in_sla=False, mos=3.1),
      cand("wan3", 2, in_sla=False, mos=3.9)], [], 0, 2),
    # the rule lists nothing else that is up: the site's other tunnels by MOS
    ([cand("wan1", 0)], [cand("wan2", 1, mos=4.0), cand("wan3", 2, mos=4.3)], 0, 2),
    ([cand("wan1", 0), cand("wan2", 1, up=False)], [cand("wan3", 2, mos=4.0)], 0, 2),
    # nowhere: no copy; fallback (no tunnel chosen): no copy
    ([cand("wan1", 0)], [cand("wan2", 1, up=False)], 0, None),
    ([cand("wan1", 0, up=False), cand("wan2", 1)], [], None, None),
])
def test_copy_goes_to_the_next_best_tunnel_that_is_up(listed, others, chosen, want):
    got = choose_copy(listed, chosen, others)
    assert (got.tunnel if got else None) == want


def views(loss1=0.0, long1=None, up2=True):
    return [TunnelView("t1", "wan1", True, stats(20, loss1), long1),
            TunnelView("t2", "wan2", up2, stats(30)), TunnelView("t3", "wan3", True, stats(40))]


ACTIVE = {"wan1": 0, "wan2": 1, "wan3": 2}


def test_plan_copies_always_or_per_loss_threshold_with_an_off_hold():
    rs = parse("""
        rules:
          - {name: voice, match: {proto: udp}, wan: wan1, duplicate: true}
          - {name: rtp, match: {proto: udp}, wan: [wan1, wan3], duplicate: {when_loss_above: 5%}}
    """)
    voice, rtp = rs.rules
    plan = QualityPlan(rs.rules, {})
    assert plan.dups == {voice.wan_key: ("voice", None), rtp.wan_key: ("rtp", 5.0)}
    assert plan.decide(views(), ACTIVE, 0, 0.0)
    # voice lists one WAN: the copy goes to the site's best other tunnel (t2: lower RTT)
    assert plan.resolved() == {voice.wan_key: 0, rtp.wan_key: 0}
    assert plan.copies() == {voice.wan_key: 1}
    assert plan.explain(voice.wan_key, ["t1", "t2", "t3"])["copy"] == "t2"
    assert plan.explain(voice.wan_key, ["t1", "t2", "t3"])["why"].endswith(
        "; a copy of each packet on t2")
    assert plan.explain(rtp.wan_key, ["t1", "t2", "t3"])["copy"] is None
    # loss over 5 %: rtp copies at once, onto its next listed WAN
    assert plan.decide(views(0.1, 0.03), ACTIVE, 0, 1.0)
    assert plan.copies() == {voice.wan_key: 1, rtp.wan_key: 2}
    (ev,) = plan.dup_changes
    assert (ev.type, ev.rule, ev.tunnel, ev.copy) == ("duplication_on", "rtp", "t1", "t3")
    assert "loss 10 % > 5 %" in ev.reason
    # back under the threshold: copies go on for DUP_OFF_HOLD, and the longer horizon
    # must be under it too
    plan.dup_changes.clear()
    assert not plan.decide(views(0.0, 0.1), ACTIVE, 0, 2.0)
    assert not plan.decide(views(0.0, 0.0), ACTIVE, 0, 3.0)
    assert not plan.decide(views(0.0, 0.0), ACTIVE, 0, 3.0 + DUP_OFF_HOLD - 0.1)
    assert rtp.wan_key in plan.copies() and plan.dup_changes == []
    assert plan.decide(views(0.0, 0.0), ACTIVE, 0, 3.0 + DUP_OFF_HOLD)
    assert plan.copies() == {voice.wan_key: 1}
    assert [e.type for e in plan.dup_changes] == ["duplication_off"]
    # the copy tunnel goes down: the copy moves to the next one
    plan.decide(views(up2=False), ACTIVE, 0, 100.0)
    assert plan.copies() == {voice.wan_key: 2}


def test_daemon_writes_dup_values_into_the_wan_table(tmp_path):
    """A copying rule's wan-table entry is DUP_FLAG | a dup_tab index whose entry
    names tunnel and copy; a rules apply without duplication releases it."""
    from steerd.cli import request
    from steerd.lab.topology import Lab
    from tests.unit.test_control import running_daemon

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: voice, match: {proto: udp}, wan: [wan1, wan2], "
                     "duplicate: true}, {name: web, match: {proto: tcp}, wan: wan1}]\n")
    gen = running_daemon(Lab("u").config(rules_file=str(rules)), tmp_path)
    d = next(gen)
    try:
        key = "@wan1,wan2#dup:voice"
        row = d.rulemaps.wan_tunnels[0]
        assert row[key] & DUP_FLAG and row["wan1"] == 0
        assert d.dp.dups == {(0, key): (row[key] & ~DUP_FLAG, 0, 1)}   # on tunnel 0, copy on 1
        listed = {r["name"]: r for r in request(d.cfg.control_socket, {"cmd": "rules_list"})["rules"]}
        assert listed["voice"]["copy"] == "pri-wan2" and "copy" not in listed["web"]
        out = request(d.cfg.control_socket, {"cmd": "rules_apply", "path": "r.yaml", "dry_run": False,
                                             "text": "rules: [{name: voice, match: {proto: udp}, "
                                                     "wan: [wan1, wan2]}]"})
        assert out["ok"]
        assert d.dp.dups == {} and d.rulemaps.wan_tunnels[0]["@wan1,wan2"] == 0
    finally:
        gen.close()


def test_entry_for_each_pair_of_link_kinds():
    xfrm1, xfrm2 = Link(11, False, True, b""), Link(12, False, True, b"")
    veth1 = Link(21, True, True, bytes.fromhex("025e00000001"))
    veth2 = Link(22, True, True, bytes.fromhex("025e00000002"))
    arp = Link(23, True, False, bytes.fromhex("025e00000003"))
    e = entry_for(0, xfrm1, 1, xfrm2)
    assert (e.tunnel, e.src_ifindex, e.ifindex, e.copy_tunnel, e.rewrite) == (0, 11, 12, 1, 0)
    e = entry_for(0, veth1, 1, veth2)
    assert e.rewrite == 1 and bytes(e.mac) == veth2.mac * 2
    assert entry_for(0, veth1, 1, xfrm2).rewrite == 0    # the kernel strips the header
    assert entry_for(0, xfrm1, 1, veth2) is None          # no header to copy onto Ethernet
    assert entry_for(0, veth1, 1, arp) is None            # an ARP neighbour is not known here
    assert DUP_FLAG > 6 * 65536                            # above every tunnel id


def test_rules_list_table_shows_duplication_and_the_copy(tmp_path):
    """`steerctl rules list` in a terminal says which rules duplicate (and from
    which loss on), copying now or not, not only its --json."""
    from steerd.cli import render_rules, request
    from steerd.lab.topology import Lab
    from tests.unit.test_control import running_daemon

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: voice, match: {proto: udp}, wan: [wan1, wan2], "
                     "duplicate: true}, {name: rtp, match: {dst_port: 5004}, wan: wan2, "
                     "duplicate: {when_loss_above: 2%}}, {name: web, match: {proto: tcp}, "
                     "wan: wan1}]\n")
    gen = running_daemon(Lab("u").config(rules_file=str(rules)), tmp_path)
    d = next(gen)
    try:
        listed = request(d.cfg.control_socket, {"cmd": "rules_list"})["rules"]
        lines = {ln.split()[1]: ln for ln in render_rules(listed).splitlines()[2:]}
        assert "wan1,wan2 duplicate " in lines["voice"] and "copy" in lines["voice"]
        assert "wan2 duplicate when loss > 2% " in lines["rtp"] and "copy" not in lines["rtp"]
        assert "duplicate" not in lines["web"] and "copy" not in lines["web"]
    finally:
        gen.close()
