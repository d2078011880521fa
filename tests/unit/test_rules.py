"""steerd.rules: parsing, validation errors, diff, reference classifier, compiler.

Pure Python: no root, no kernel. The compiled tables are checked by simulating
the eBPF matcher on them (CompiledRules.lookup) against the reference classifier.
"""
from __future__ import annotations

import ipaddress
import json
import textwrap
from array import array

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerd import rules as R
from steerd.rules import encode
from steerd.rules import (DSCP_NAMES, NO_TUNNEL, RV_DROP, RV_NONE, RV_SPREAD, RV_TUNNEL, Limits,
                          PacketKey, RuleSet, classify, compile_rules, decide, diff, parse_rules)
from steerd.yamlsrc import ValidationError

WANS = {"wan1", "wan2", "wan3"}


def parse(text: str, **kw) -> RuleSet:
    return parse_rules(textwrap.dedent(text), "rules.yaml", kw.pop("wans", WANS), **kw)


def pk(src: str, dst: str, proto="udp", sport=0, dport=0, dscp=0, ifname=None, ifindex=0):
    return PacketKey.make(src, dst, proto, sport, dport, dscp, ifindex, ifname)


FULL = """\
rules:
  - name: voice
    match:
      src: [0.0.0.0/0]
      dst: [10.20.5.0/24, "2001:db8:5::/48", "!10.20.5.128/25"]
      dst_not: 10.20.5.64/26
      proto: udp
      dst_port: [5060, 10000-20000, "20001 - 20010"]
      src_port: []
      dscp: [46, af41]
      ingress: eth1
    wan: wan2
    fallback: auto
    priority: 7
  - name: bulk
    match: {proto: [tcp, udp, 132], dst_port: 873}
    wan: wan1
    fallback: wan3
  - name: catch-all
    wan: wan3
    fallback: drop
"""


# --------------------------------------------------------------------------- parsing

def test_parse_full_file():
    rs = parse(FULL, ingress={"eth1", "eth2"})
    assert rs.names() == ["voice", "bulk", "catch-all"]
    v = rs.rules[0]
    assert v.line == 0 or v.line == 2
    m = v.match
    assert m.src == (ipaddress.ip_network("0.0.0.0/0"),)
    assert m.dst == (ipaddress.ip_network("10.20.5.0/24"), ipaddress.ip_network("2001:db8:5::/48"))
    assert m.dst_not == (ipaddress.ip_network("10.20.5.128/25"), ipaddress.ip_network("10.20.5.64/26"))
    assert m.proto == {17}
    assert m.dst_port == ((5060, 5060), (10000, 20010))      # merged: adjacent ranges
    assert m.src_port == ()
    assert m.dscp == {46, 34}
    assert m.ingress == ("eth1",)
    assert (v.wan, v.fallback, v.priority) == ("wan2", "auto", 7)
    assert rs.rules[1].match.proto == {6, 17, 132}
    assert rs.rules[1].fallback == "wan3"
    assert rs.rules[2].match == R.Match()
    assert rs.rules[2].fallback == "drop"


def test_empty_files_mean_no_rules():
    for text in ("", "rules:\n", "rules: []\n", "{}\n"):
        assert len(parse(text)) == 0


def test_json_file_is_accepted_and_equal():
    data = yaml.safe_load(FULL)
    assert parse(json.dumps(data)).rules == parse(FULL).rules


def test_slow_path_gives_line_numbers_on_error():
    # fast paths (json/libyaml) carry no lines; an error re-parses with lines
    text = json.dumps({"rules": [{"name": "a", "wan": "wan1"}, {"name": "b", "wan": "nope"}]},
                      indent=2)
    with pytest.raises(ValidationError) as e:
        parse(text)
    (p,) = e.value.problems
    assert p.key == "rules[1].wan" and p.line == text.splitlines().index('      "wan": "nope"') + 1


@pytest.mark.parametrize("text,key,hint", [
    ("rules: [{name: a, wan: wan22}]", "rules[0].wan", "(did you mean 'wan2'?)"),
    ("rules: [{name: a, wan: wan1, match: {proto: TCPP}}]", "rules[0].match.proto", "(did you mean 'tcp'?)"),
    ("rules: [{name: a, wan: wan1, match: {dscp: EFF}}]", "rules[0].match.dscp", "(did you mean 'ef'?)"),
    ("rules: [{name: a, wan: wan1, mach: {dscp: ef}}]", "rules[0].mach", "(did you mean 'match'?)"),
    ("rules: [{name: a, wan: wan1, match: {dst_prot: 80}}]", "rules[0].match.dst_prot",
     "(did you mean 'dst_port'?)"),
])
def test_a_mistyped_name_gets_a_did_you_mean(text, key, hint):
    """As in the config (the one validation kit): the closest name is suggested."""
    with pytest.raises(ValidationError) as exc:
        parse(text)
    (p,) = exc.value.problems
    assert p.key == key and p.expected.endswith(hint), p


def test_dscp_names():
    assert DSCP_NAMES["ef"] == 46 and DSCP_NAMES["le"] == 1 and DSCP_NAMES["cs0"] == 0
    assert DSCP_NAMES["cs7"] == 56 and DSCP_NAMES["af11"] == 10 and DSCP_NAMES["af43"] == 38
    rs = parse("rules: [{name: a, wan: wan1, match: {dscp: [EF, cs1, af21, le, 0]}}]")
    assert rs.rules[0].match.dscp == {46, 8, 18, 1, 0}


def test_wans_none_skips_the_wan_check():
    rs = parse_rules("rules: [{name: a, wan: anything, fallback: other}]", "r", None)
    assert rs.rules[0].wan == "anything"


# Each bad file: (text, line, key) of the one expected problem.
BAD = [
    ("unknown rule key", "rules:\n  - name: a\n    wan: wan1\n    prio: 3\n", 4, "rules[0].prio"),
    ("missing name", "rules:\n  - wan: wan1\n", 2, "rules[0].name"),
    ("duplicate name", "rules:\n  - {name: a, wan: wan1}\n  - {name: a, wan: wan2}\n", 3,
     "rules[1].name"),
    ("bad name", "rules:\n  - name: my rule\n    wan: wan1\n", 2, "rules[0].name"),
    ("missing wan", "rules:\n  - name: a\n    fallback: drop\n", 2, "rules[0].wan"),
    ("unknown wan", "rules:\n  - name: a\n    wan: wan9\n", 3, "rules[0].wan"),
    ("bad fallback", "rules:\n  - name: a\n    wan: wan1\n    fallback: sometimes\n", 4,
     "rules[0].fallback"),
    ("fallback = wan", "rules:\n  - name: a\n    wan: wan1\n    fallback: wan1\n", 4,
     "rules[0].fallback"),
    ("bad cidr", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst: 10.0.0.300/24\n", 5,
     "rules[0].match.dst"),
    ("host bits", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst:\n        - 10.0.0.0/8\n"
     "        - 10.0.0.1/24\n", 7, "rules[0].match.dst[1]"),
    ("bang in *_not", "rules:\n  - name: a\n    wan: wan1\n    match:\n      src_not: ['!10.0.0.0/8']\n",
     5, "rules[0].match.src_not[0]"),
    ("proto name", "rules:\n  - name: a\n    wan: wan1\n    match: {proto: tcpp}\n", 4,
     "rules[0].match.proto"),
    ("proto number", "rules:\n  - name: a\n    wan: wan1\n    match:\n      proto: [tcp, 256]\n", 5,
     "rules[0].match.proto[1]"),
    ("port 0", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst_port: [0]\n", 5,
     "rules[0].match.dst_port[0]"),
    ("reversed range", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst_port:\n        - 80\n"
     "        - 200-100\n", 7, "rules[0].match.dst_port[1]"),
    ("port too big", "rules:\n  - name: a\n    wan: wan1\n    match:\n      src_port: 70000\n", 5,
     "rules[0].match.src_port"),
    ("port name", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst_port: http\n", 5,
     "rules[0].match.dst_port"),
    ("port bool", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst_port: [true]\n", 5,
     "rules[0].match.dst_port[0]"),
    ("dscp 64", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dscp: 64\n", 5,
     "rules[0].match.dscp"),
    ("dscp name", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dscp: [ef, af44]\n", 5,
     "rules[0].match.dscp[1]"),
    ("unknown match key", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dport: 80\n", 5,
     "rules[0].match.dport"),
    ("ports without port proto", "rules:\n  - name: a\n    wan: wan1\n    match:\n      proto: icmp\n"
     "      dst_port: 80\n", 5, "rules[0].match.proto"),
    ("priority 0", "rules:\n  - name: a\n    wan: wan1\n    priority: 0\n", 4, "rules[0].priority"),
    ("priority text", "rules:\n  - name: a\n    wan: wan1\n    priority: high\n", 4,
     "rules[0].priority"),
    ("match not a map", "rules:\n  - name: a\n    wan: wan1\n    match: [dst]\n", 4, "rules[0].match"),
    # a problem with a key or a whole section points at the key, as in the config
    ("rules not a list", "rules:\n  name: a\n", 1, "rules"),
    ("rule not a map", "rules:\n  - just-a-name\n", 2, "rules[0]"),
    ("unknown top key", "rule:\n  - {name: a, wan: wan1}\n", 1, "rule"),
    ("top not a map", "- {name: a, wan: wan1}\n", 1, "<top>"),
    ("ingress unknown", "rules:\n  - name: a\n    wan: wan1\n    match:\n      ingress: eth9\n", 5,
     "rules[0].match.ingress"),
    ("yaml syntax", "rules:\n  - name: a\n    wan: [wan1\n", 4, "<yaml>"),
    ("unquoted negation", "rules:\n  - name: a\n    wan: wan1\n    match:\n      dst: !10.0.0.0/8\n",
     5, "<yaml>"),
    ("duplicate key", "rules:\n  - name: a\n    wan: wan1\n    wan: wan2\n", 4, "rules[0].wan"),
    ("empty name", "rules:\n  - name: ''\n    wan: wan1\n", 2, "rules[0].name"),
]


@pytest.mark.parametrize("text,line,key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_rule_files(text, line, key):
    with pytest.raises(ValidationError) as e:
        parse_rules(text, "bad.yaml", WANS, ingress={"eth1"})
    probs = e.value.problems
    assert len(probs) == 1, probs
    p = probs[0]
    assert (p.file, p.line, p.key) == ("bad.yaml", line, key), str(p)
    assert p.expected
    assert f"bad.yaml:{line}:" in str(e.value)


def test_all_errors_reported_at_once():
    text = ("rules:\n"
            "  - name: a\n    wan: wan9\n"                       # lines 2-3
            "  - name: b\n    wan: wan1\n    match:\n"            # 4-6
            "      dst_port: [80, 0]\n"                           # 7
            "      dscp: zz\n"                                    # 8
            "  - name: a\n    wan: wan1\n")                       # 9-10
    with pytest.raises(ValidationError) as e:
        parse_rules(text, "r.yaml", WANS)
    got = [(p.line, p.key) for p in e.value.problems]
    assert got == [(3, "rules[0].wan"), (7, "rules[1].match.dst_port[1]"),
                   (8, "rules[1].match.dscp"), (9, "rules[2].name")]


def test_too_many_rules():
    text = "rules:\n" + "".join(f"  - {{name: r{i}, wan: wan1}}\n" for i in range(3))
    with pytest.raises(ValidationError) as e:
        parse_rules(text, "r.yaml", WANS, max_rules=2)
    assert [(p.line, p.key) for p in e.value.problems] == [(4, "rules[2]")]


# --------------------------------------------------------------------------- diff

def test_diff_added_removed_changed_moved():
    old = parse("""
        rules:
          - {name: a, wan: wan1, match: {dst: 10.0.0.0/8}}
          - {name: b, wan: wan1}
          - {name: c, wan: wan2, match: {dst_port: [80, 443]}}
          - {name: d, wan: wan2}
        """)
    new = parse("""
        rules:
          - {name: b, wan: wan1}
          - {name: a, wan: wan1, match: {dst: 10.0.0.0/8}}
          - {name: c, wan: wan2, fallback: drop, match: {dst_port: [80, 8443]}}
          - {name: e, wan: wan3}
        """)
    d = diff(old, new)
    assert [r.name for r in d.added] == ["e"]
    assert [r.name for r in d.removed] == ["d"]
    assert [(o.name, n.name) for o, n in d.changed] == [("c", "c")]
    assert d.moved in (("a",), ("b",))
    text = d.render()
    assert "+ e:" in text and "- d:" in text and "~ c:" in text
    assert "match.dst_port: [80, 443] -> [80, 8443]" in text
    assert "fallback: auto -> drop" in text
    assert "1 added, 1 removed, 1 changed, 1 moved" in text
    assert d.as_dict()["added"] == ["e"]


def test_diff_ignores_line_numbers_and_formatting():
    a = parse("rules:\n  - {name: a, wan: wan1, match: {dst_port: [81, 80, 82-90]}}\n")
    b = parse("rules:\n\n\n  - name: a\n    wan: wan1\n    match:\n      dst_port: 80-90\n")
    d = diff(a, b)
    assert d.empty and d.render() == "no changes"


# --------------------------------------------------------------------------- reference classifier

def test_order_is_priority():
    rs = parse("""
        rules:
          - {name: narrow, wan: wan1, match: {dst: 10.1.0.0/16}}
          - {name: wide, wan: wan2, match: {dst: 10.0.0.0/8}}
          - {name: narrower-but-later, wan: wan3, match: {dst: 10.1.2.0/24}}
        """)
    assert classify(rs, pk("1.1.1.1", "10.1.2.3")) == 0
    assert classify(rs, pk("1.1.1.1", "10.9.2.3")) == 1
    assert classify(rs, pk("1.1.1.1", "11.0.0.1")) is None


def test_port_range_edges():
    rs = parse("rules: [{name: a, wan: wan1, match: {dst_port: [5060, 10000-20000]}}]")
    hit = {p: classify(rs, pk("1.1.1.1", "2.2.2.2", "udp", 1, p)) for p in
           (5059, 5060, 5061, 9999, 10000, 20000, 20001)}
    assert hit == {5059: None, 5060: 0, 5061: None, 9999: None, 10000: 0, 20000: 0, 20001: None}
    # a packet without ports (ICMP) never matches a rule with ports
    assert classify(rs, pk("1.1.1.1", "2.2.2.2", "icmp")) is None


def test_negation():
    rs = parse("""
        rules:
          - {name: a, wan: wan1, match: {src: [10.0.0.0/8, "!10.1.0.0/16"], src_not: 10.2.0.0/16}}
          - {name: b, wan: wan2, match: {dst_not: 192.168.0.0/16}}
        """)
    assert classify(rs, pk("10.0.0.1", "192.168.1.1")) == 0
    assert classify(rs, pk("10.1.0.1", "192.168.1.1")) is None
    assert classify(rs, pk("10.2.0.1", "8.8.8.8")) == 1
    # only-negated: an IPv6 address is in no IPv4 prefix, so it matches
    assert classify(rs, pk("2001:db8::1", "2001:db8::2")) == 1


def test_families_do_not_mix():
    rs = parse("""
        rules:
          - {name: v4any, wan: wan1, match: {dst: 0.0.0.0/0}}
          - {name: v6any, wan: wan2, match: {dst: "::/0"}}
        """)
    assert classify(rs, pk("1.1.1.1", "2.2.2.2")) == 0
    assert classify(rs, pk("::1", "::2")) == 1
    # ::ffff:0:0/96 is not IPv4 either
    assert classify(rs, pk("::1", "::ffff:1.2.3.4")) == 1


def test_ipv6_prefixes_and_dscp_and_proto():
    rs = parse("""
        rules:
          - {name: ef6, wan: wan1, match: {dst: "2001:db8:1::/48", dscp: ef, proto: [tcp, udp]}}
          - {name: icmp6, wan: wan2, match: {proto: icmpv6}}
          - {name: icmp4, wan: wan3, match: {proto: icmp}}
        """)
    assert classify(rs, pk("::1", "2001:db8:1:ffff::1", "udp", 1, 2, 46)) == 0
    assert classify(rs, pk("::1", "2001:db8:1:ffff::1", "udp", 1, 2, 34)) is None
    assert classify(rs, pk("::1", "2001:db8:2::1", "icmpv6")) == 1
    assert classify(rs, pk("1.1.1.1", "2.2.2.2", "icmp")) == 2


def test_ingress():
    rs = parse("rules: [{name: a, wan: wan1, match: {ingress: [eth1, eth2]}}]")
    assert classify(rs, pk("1.1.1.1", "2.2.2.2", ifname="eth2")) == 0
    assert classify(rs, pk("1.1.1.1", "2.2.2.2", ifname="eth3")) is None
    assert classify(rs, pk("1.1.1.1", "2.2.2.2")) is None


def test_decide_fallbacks():
    rs = parse("""
        rules:
          - {name: a, wan: wan1, fallback: auto, match: {dst_port: 1}}
          - {name: b, wan: wan1, fallback: drop, match: {dst_port: 2}}
          - {name: c, wan: wan1, fallback: wan2, match: {dst_port: 3}}
        """)
    up = {"wan1": 0, "wan2": 1}
    down = {"wan1": None, "wan2": 1}
    all_down = {"wan1": None, "wan2": None}

    def v(port, wt):
        d = decide(rs, pk("1.1.1.1", "2.2.2.2", "tcp", 9, port), wt)
        return d.kind, d.tunnel
    assert v(1, up) == (RV_TUNNEL, 0) and v(1, down) == (RV_SPREAD, NO_TUNNEL)
    assert v(2, up) == (RV_TUNNEL, 0) and v(2, down) == (RV_DROP, NO_TUNNEL)
    assert v(3, down) == (RV_TUNNEL, 1) and v(3, all_down) == (RV_SPREAD, NO_TUNNEL)
    assert v(4, up) == (RV_NONE, NO_TUNNEL)


# --------------------------------------------------------------------------- compiler

def test_compile_tables_shape():
    rs = parse(FULL, ingress={"eth1"})
    c = compile_rules(rs, {"eth1": 7})
    assert c.nrules == 3 and c.names == ("voice", "bulk", "catch-all")
    assert c.used == (1 << R.F_SRC) | (1 << R.F_DST) | (1 << R.F_DPORT) | (1 << R.F_PROTO) | \
        (1 << R.F_DSCP) | (1 << R.F_INGRESS)
    assert len(c.dir4[0]) == 65536 and len(c.dir4[1]) == 65536
    assert all(runs == ((0, 65535, 0),) for runs in c.sport)
    tcp, udp, sctp, _ = c.dport
    assert tcp[0][:2] == (0, 872) and tcp[-1] == (874, 65535, 0)     # only bulk: 873
    assert udp[-1] == (20011, 65535, 0)                                # voice ranges too
    assert sctp == tcp
    assert set(c.wan_ids) == {"wan1", "wan2", "wan3"}
    assert c.actions[0][3] == 7              # priority, for QoS (rule_verdict.prio)
    assert c.actions[1] == (c.wan_ids["wan1"], R.FB_WAN, c.wan_ids["wan3"], 0)
    assert c.unresolved_ingress == ()
    assert compile_rules(rs, {}).unresolved_ingress == ("eth1",)
    # catch-all rule 2: every field's U contains it
    assert all(b >> 2 & 1 for b in c.base)


def test_compiled_lookup_matches_reference_on_examples():
    rs = parse(FULL, ingress={"eth1"})
    c = compile_rules(rs, {"eth1": 7})
    cases = [pk("1.1.1.1", "10.20.5.1", "udp", 9, 5060, 46, "eth1", 7),
             pk("1.1.1.1", "10.20.5.130", "udp", 9, 5060, 46, "eth1", 7),
             pk("1.1.1.1", "10.20.5.65", "udp", 9, 5060, 46, "eth1", 7),
             pk("1.1.1.1", "10.20.5.1", "udp", 9, 5060, 46, "eth2", 8),
             pk("2001:db8::1", "2001:db8:5::1", "udp", 9, 20010, 34, "eth1", 7),
             pk("9.9.9.9", "8.8.8.8", "sctp", 9, 873), pk("9.9.9.9", "8.8.8.8", "icmp")]
    got = [c.lookup(p) for p in cases]
    assert got == [classify(rs, p) for p in cases] == [0, 2, 2, 2, 2, 1, 2]


@pytest.mark.parametrize("width", [32, 128])
def test_multibit_table_matches_longest_prefix(width):
    import random
    rnd = random.Random(5)
    lens = [1, 8, 12, 15, 16, 17, 20, 23, 24, 27, 31, 32] if width == 32 else \
        [1, 16, 17, 29, 32, 48, 56, 63, 64, 65, 96, 127, 128]
    cluster = 0x0A000000 if width == 32 else 0x20010DB8 << 96
    entries = {(0, 0): 0}
    for i in range(400):
        plen = rnd.choice(lens)
        net = rnd.getrandbits(width) >> (width - plen) << (width - plen)
        if i % 3 == 0:          # cluster some prefixes so that they nest
            net = (cluster | rnd.getrandbits(width - 32)) >> (width - plen) << (width - plen)
        entries[(net, plen)] = i + 1
    ent = tuple((n, p, v) for (n, p), v in entries.items())
    pool = array("I")
    l1 = encode._dir(ent, pool, width)
    for _ in range(3000):
        a = rnd.getrandbits(width) if rnd.random() < 0.5 else cluster | rnd.getrandbits(width - 32)
        if rnd.random() < 0.3:      # an address right inside one of the prefixes
            n, p, _ = rnd.choice(ent)
            a = n | (rnd.getrandbits(width - p) if p < width else 0)
        assert encode._dir_lookup(l1, pool, a, width) == encode._lpm(ent, a, 4 if width == 32 else 6)


def test_capacity_errors():
    rs = parse("rules:\n" + "".join(f"  - {{name: r{i}, wan: wan1, match: {{dst_port: {i + 1}}}}}\n"
                                     for i in range(70)))
    with pytest.raises(ValidationError) as e:
        compile_rules(rs, limits=Limits(max_rules=128, max_bitmaps=16))
    assert "RL_MAX_BITMAPS" in str(e.value)
    with pytest.raises(ValidationError) as e:
        compile_rules(rs, limits=Limits(max_rules=64))
    assert e.value.problems[0].key == "rules[64]"
    with pytest.raises(ValueError):
        Limits(max_rules=100)           # the dataplane needs a power of two


def test_port_tables_fold_in_the_protocol():
    """Interleaved tcp/udp port rules: a tcp packet to a udp-only port finds no
    candidate block (see _port_runs), and the answer stays the reference's."""
    rs = parse("rules:\n" + "".join(
        f"  - {{name: r{i}, wan: wan1, match: {{proto: {'tcp' if i % 2 == 0 else 'udp'}, "
        f"dst_port: {80 if i % 2 == 0 else 53}}}}}\n" for i in range(300)))
    c = compile_rules(rs)
    p = pk("1.1.1.1", "2.2.2.2", "tcp", 1, 53)
    ids = c.layout.field_ids(c, p)
    assert c.bitmaps[ids[R.F_DPORT]] == 0
    assert c.lookup(p) is None and classify(rs, p) is None
    assert c.lookup(pk("1.1.1.1", "2.2.2.2", "udp", 1, 53)) == 1


def test_many_rules_cross_summary_words():
    """> 4096 rules: matches in later summary words and false-positive blocks."""
    n = 5000
    lines = ["rules:"]
    for i in range(n):
        # every rule shares dst_port 443 with many others, but dst is unique: the
        # port bitmap has bits in every block while only one block holds the match
        lines.append(f"  - {{name: r{i}, wan: wan1, match: {{dst: 10.{i >> 8}.{i & 255}.0/24, "
                     f"dst_port: [{443 if i % 2 else 80}]}}}}")
    rs = parse("\n".join(lines) + "\n")
    c = compile_rules(rs)
    for i in (0, 1, 63, 64, 4095, 4096, 4097, 4999):
        p = pk("1.1.1.1", f"10.{i >> 8}.{i & 255}.9", "tcp", 1, 443 if i % 2 else 80)
        assert c.lookup(p) == classify(rs, p) == i
        p = pk("1.1.1.1", f"10.{i >> 8}.{i & 255}.9", "tcp", 1, 80 if i % 2 else 443)
        assert c.lookup(p) is None and classify(rs, p) is None


# --------------------------------------------------------------------------- property: compiled == reference

V4_NETS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25", "10.1.2.7/32",
           "10.200.0.0/13", "192.168.0.0/16", "192.168.1.0/24", "128.0.0.0/1"]
V6_NETS = ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64", "2001:db8:1:2::9/128",
           "fe80::/10"]
NETS = V4_NETS + V6_NETS
V4_ADDRS = ["10.1.2.7", "10.1.2.200", "10.1.3.1", "10.9.9.9", "10.200.1.1", "192.168.1.1",
            "192.168.2.2", "8.8.8.8", "200.1.1.1", "127.0.0.1"]
V6_ADDRS = ["2001:db8:1:2::9", "2001:db8:1:2::8", "2001:db8:1:3::1", "2001:db8:2::1", "fe80::1",
            "2002::1", "::1"]
PORT_EDGES = [1, 22, 53, 79, 80, 81, 443, 1023, 1024, 5060, 10000, 20000, 20001, 65535]
IFACES = {"eth1": 11, "eth2": 12, "eth3": 13}


def rule_dicts(draw, n):
    rules = []
    for i in range(n):
        m = {}
        for fld in ("src", "dst"):
            if draw(st.booleans()):
                pos = draw(st.lists(st.sampled_from(NETS), max_size=3, unique=True))
                neg = draw(st.lists(st.sampled_from(NETS), max_size=2, unique=True))
                m[fld] = pos + ["!" + x for x in neg if x not in pos]
        if draw(st.booleans()):
            m["proto"] = draw(st.lists(st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "any", 47]),
                                       min_size=1, max_size=3, unique=True))
        for fld in ("src_port", "dst_port"):
            if draw(st.integers(0, 2)) == 0:
                items = []
                for _ in range(draw(st.integers(1, 3))):
                    lo = draw(st.sampled_from(PORT_EDGES))
                    hi = draw(st.sampled_from([p for p in PORT_EDGES if p >= lo]))
                    items.append(lo if lo == hi else f"{lo}-{hi}")
                m[fld] = items
        if (m.get("src_port") or m.get("dst_port")) and m.get("proto") and \
                not {"tcp", "udp", "any"} & set(m["proto"]):
            m["proto"].append("tcp")
        if draw(st.integers(0, 3)) == 0:
            m["dscp"] = draw(st.lists(st.sampled_from([0, 10, 46, "ef", "af41", "cs1", 63]),
                                      min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 4)) == 0:
            m["ingress"] = draw(st.lists(st.sampled_from(sorted(IFACES)), min_size=1, max_size=2,
                                         unique=True))
        rule = {"name": f"r{i}", "match": m, "wan": draw(st.sampled_from(sorted(WANS))),
                "fallback": draw(st.sampled_from(["auto", "drop", *sorted(WANS)]))}
        if rule["fallback"] == rule["wan"]:
            rule["fallback"] = "auto"
        if draw(st.booleans()):
            rule["priority"] = draw(st.integers(1, 255))
        rules.append(rule)
    return rules


@st.composite
def rulesets(draw, max_rules=150):
    n = draw(st.integers(0, max_rules))
    return parse_rules(json.dumps({"rules": rule_dicts(draw, n)}), "gen.json", WANS)


@st.composite
def packets(draw):
    v6 = draw(st.booleans())
    addrs = V6_ADDRS if v6 else V4_ADDRS
    proto = draw(st.sampled_from([6, 17, 1, 58, 47]))
    has_ports = proto in (6, 17)
    ifname = draw(st.sampled_from([None, *sorted(IFACES)]))
    return PacketKey.make(draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs)), proto,
                          draw(st.sampled_from(PORT_EDGES)) if has_ports else 0,
                          draw(st.sampled_from(PORT_EDGES)) if has_ports else 0,
                          draw(st.sampled_from([0, 10, 46, 63, 8])),
                          IFACES.get(ifname, 1), ifname)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rs=rulesets(), pkts=st.lists(packets(), min_size=1, max_size=30))
def test_property_compiled_tables_equal_reference(rs, pkts):
    c = compile_rules(rs, IFACES, limits=Limits(max_rules=256))
    for p in pkts:
        assert c.lookup(p) == classify(rs, p), (p, rs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rs=rulesets(max_rules=40), pkts=st.lists(packets(), min_size=1, max_size=10))
def test_property_default_limits(rs, pkts):
    """Same with the dataplane's default sizes (4 summary words)."""
    c = compile_rules(rs, IFACES)
    for p in pkts:
        assert c.lookup(p) == classify(rs, p)
