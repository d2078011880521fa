"""Rules with a WAN preference list and an SLA: parsed, shown, diffed, compiled to their
own wan-table entry; every bad value refused at its line. Plain rules are unchanged."""
from __future__ import annotations

import textwrap

import pytest

from steerd.rules import compile_rules, decide, diff, parse_rules, PacketKey, RV_SPREAD, RV_TUNNEL
from steerd.sla import SlaLimits
from steerd.yamlsrc import ValidationError

WANS = {"wan1", "wan2", "wan3"}
CLASSES = {"realtime": SlaLimits(max_loss_pct=1, max_latency_ms=150, max_jitter_ms=30)}


def parse(text, **kw):
    return parse_rules(textwrap.dedent(text), "rules.yaml", kw.pop("wans", WANS),
                       sla_classes=kw.pop("classes", CLASSES), **kw)


def test_lists_and_classes_parse():
    rs = parse("""
        rules:
          - name: voice
            match: {proto: udp, dst_port: [5060, 10000-20000]}
            wan: [wan2, wan1]
            sla: realtime
            fallback: auto
          - name: video
            wan: [wan1, wan3]
            sla: {max_latency_ms: 200, min_mos: 3.8, codec: g729, restore_hold: 30s}
            fallback: wan2
          - name: plain
            wan: wan3
          - name: one-item
            wan: [wan2]
    """)
    voice, video, plain, one = rs.rules
    assert (voice.wan, voice.wans, voice.sla, voice.choices) == \
        ("wan2", ("wan2", "wan1"), "realtime", ("wan2", "wan1"))
    assert video.sla == SlaLimits(max_latency_ms=200, min_mos=3.8, codec="g729", restore_hold=30.0)
    assert video.sla_class == "rule:video" and video.fallback == "wan2"
    assert not plain.quality and plain.wans == () and plain.sla is None
    assert not one.quality and one.wan == "wan2" and one.wans == ()   # a one-item list is a role
    assert voice.as_dict()["wan"] == ["wan2", "wan1"] and voice.as_dict()["sla"] == "realtime"
    assert video.as_dict()["sla"] == {"max_latency_ms": 200.0, "min_mos": 3.8, "codec": "g729",
                                      "restore_hold": 30.0}
    assert plain.as_dict()["wan"] == "wan3" and "sla" not in plain.as_dict()
    assert voice.summary().endswith("-> [wan2, wan1] sla realtime (fallback auto)")
    assert plain.summary() == "any -> wan3 (fallback auto)"


def test_plain_rules_compile_exactly_as_before():
    rs = parse("rules: [{name: a, wan: wan2, match: {dst_port: 80}}, {name: b, wan: wan1, fallback: drop}]")
    c = compile_rules(rs)
    assert c.wan_ids == {"wan1": 0, "wan2": 1}
    p = PacketKey.make("10.0.0.1", "10.20.0.1", "tcp", 1234, 80)
    assert decide(rs, p, {"wan1": 0, "wan2": 1}).tunnel == 1


def test_quality_rules_follow_their_own_entry():
    rs = parse("""
        rules:
          - {name: voice, match: {proto: udp}, wan: [wan1, wan2], sla: realtime}
          - {name: voice-b, match: {dscp: ef}, wan: [wan1, wan2], sla: realtime, fallback: wan3}
          - {name: web, match: {proto: tcp}, wan: wan1}
    """)
    c = compile_rules(rs)
    key = "@wan1,wan2|realtime"
    assert set(c.wan_ids) == {key, "wan1", "wan3"}
    assert c.actions[0][0] == c.actions[1][0] == c.wan_ids[key]       # one shared entry
    udp = PacketKey.make("10.0.0.1", "10.20.0.1", "udp", 1, 2)
    ef = PacketKey.make("10.0.0.1", "10.20.0.1", "tcp", 1, 2, dscp=46)
    table = {"wan1": 0, "wan2": 1, "wan3": 2, key: 1}                 # the daemon chose wan2
    assert (decide(rs, udp, table).kind, decide(rs, udp, table).tunnel) == (RV_TUNNEL, 1)
    table[key] = None                                                  # nothing up: fallback
    assert decide(rs, udp, table).kind == RV_SPREAD
    assert decide(rs, ef, table).tunnel == 2


def test_diff_names_the_sla_change():
    a = parse("rules: [{name: v, wan: [wan1, wan2], sla: realtime}]")
    b = parse("rules: [{name: v, wan: [wan2, wan1], sla: {max_latency_ms: 100}}]")
    text = diff(a, b).render()
    assert "wan: [wan1, wan2] -> [wan2, wan1]" in text
    assert "sla: realtime -> {'max_latency_ms': 100.0}" in text


BAD = [
    ("unknown wan in list", "rules:\n  - name: a\n    wan: [wan1, wan9]  #!\n", "rules[0].wan[1]",
     "wan roles"),
    ("block list item", "rules:\n  - name: a\n    wan:\n      - wan1\n      - nope  #!\n",
     "rules[0].wan[1]", "wan roles"),
    ("duplicate in list", "rules:\n  - name: a\n    wan: [wan1, wan1]  #!\n", "rules[0].wan[1]",
     "once"),
    ("empty list", "rules:\n  - name: a\n    wan: []  #!\n", "rules[0].wan", "non-empty list"),
    ("list of lists", "rules:\n  - name: a\n    wan: [[wan1]]  #!\n", "rules[0].wan[0]",
     "wan roles"),
    ("fallback in list", "rules:\n  - name: a\n    wan: [wan1, wan2]\n    fallback: wan2  #!\n",
     "rules[0].fallback", "does not list"),
    ("unknown class", "rules:\n  - name: a\n    wan: [wan1, wan2]\n    sla: gold  #!\n",
     "rules[0].sla", "realtime"),
    ("class list", "rules:\n  - name: a\n    wan: wan1\n    sla: [realtime]  #!\n",
     "rules[0].sla", "class of the config's sla_classes"),
    ("inline unknown key", "rules:\n  - name: a\n    wan: [wan1, wan2]\n    sla:\n"
     "      max_latency: 150  #!\n", "rules[0].sla.max_latency", "max_latency_ms"),
    ("inline bad value", "rules:\n  - name: a\n    wan: [wan1, wan2]\n    sla:\n"
     "      max_loss_pct: 200  #!\n", "rules[0].sla.max_loss_pct", "0 to 100"),
    ("inline mos", "rules:\n  - name: a\n    wan: [wan1, wan2]\n    sla: {min_mos: 9}  #!\n",
     "rules[0].sla.min_mos", "<= 4.5"),
    ("inline no limit", "rules:\n  - name: a\n    wan: [wan1, wan2]\n    sla: {codec: g711}  #!\n",
     "rules[0].sla", "at least one limit"),
    ("inline flow hold", "rules:\n  - name: a\n    wan: [wan1, wan2]\n"
     "    sla: {max_loss_pct: 1, leave_hold: later}  #!\n", "rules[0].sla.leave_hold", "duration"),
]


@pytest.mark.parametrize("text,key,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_rule_is_refused_at_its_line(text, key, fragment):
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if "#!" in t]
    with pytest.raises(ValidationError) as exc:
        parse(text)
    got = exc.value.problems
    hits = [p for p in got if p.key == key and p.line == line]
    assert hits, "\n".join(map(str, got))
    assert any(fragment in p.expected for p in hits), [p.expected for p in hits]
    assert all(p.file == "rules.yaml" for p in got)


def test_class_names_need_the_configs_classes():
    with pytest.raises(ValidationError) as exc:
        parse("rules:\n  - {name: a, wan: [wan1, wan2], sla: realtime}\n", classes={})
    (p,) = exc.value.problems
    assert p.line == 2 and "defines no sla_classes" in p.expected
    # without the config (no classes given) a name is taken on trust, like wans=None
    rs = parse_rules("rules: [{name: a, wan: [x, y], sla: gold}]", "r")
    assert rs.rules[0].sla == "gold"
