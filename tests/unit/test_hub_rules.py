"""Hub mode rules: `site:` limits a rule to some sites (validated against the
config's sites and each site's wan roles) by cutting its dst to their ranges."""
from __future__ import annotations

import pytest
import yaml

from steerd.config import parse_config
from steerd.lab.topology import HubLab
from steerd.rules import compile_rules, parse_rules
from steerd.rules.model import PacketKey
from steerd.rules.reference import classify
from steerd.rules.sites import limit_to_sites
from steerd.yamlsrc import ValidationError


@pytest.fixture(scope="module")
def cfg():
    raw = HubLab("u", 3, 3).config()
    raw["sites"][2]["tunnels"] = raw["sites"][2]["tunnels"][:1]      # site2 has wan1 only
    return parse_config(yaml.safe_dump(raw, sort_keys=False), "hub.yaml")


def parse(cfg, text: str):
    return parse_rules(text, "rules.yaml", cfg.wans, set(cfg.ingress), sites=cfg.site_wans)


def problems(cfg, text: str):
    with pytest.raises(ValidationError) as exc:
        parse(cfg, text)
    return exc.value.problems


RULES = """rules:
  - name: voice-a
    match: {proto: udp, dst_port: [5060]}
    wan: wan2
    site: site0
  - name: web-bc
    match: {dst: [10.100.16.0/24, 10.100.32.0/24, 10.9.0.0/16], proto: tcp}
    wan: wan1
    site: [site1, site2]
  - name: ssh-all
    match: {proto: tcp, dst_port: [22]}
    wan: wan1
"""


def test_site_limited_rules_parse_and_show_their_sites(cfg):
    rs = parse(cfg, RULES)
    assert [r.sites for r in rs.rules] == [("site0",), ("site1", "site2"), ()]
    assert rs.rules[0].as_dict()["site"] == ["site0"] and "site" not in rs.rules[2].as_dict()
    assert "at site site1,site2" in rs.rules[1].summary()


def test_limit_cuts_dst_to_the_sites_ranges(cfg):
    limited = limit_to_sites(parse(cfg, RULES), cfg.site_ranges)
    assert [str(n) for n in limited.rules[0].match.dst] == ["10.100.0.0/20"]
    assert [str(n) for n in limited.rules[1].match.dst] == ["10.100.16.0/24", "10.100.32.0/24"]
    assert limited.rules[2].match.dst == ()

    def first(dst: str, proto: str, dport: int) -> int | None:
        return classify(limited, PacketKey.make("10.99.0.2", dst, proto, 4000, dport))
    assert first("10.100.0.7", "udp", 5060) == 0       # site0's voice
    assert first("10.100.16.7", "udp", 5060) is None   # not at site1
    assert first("10.100.16.7", "tcp", 22) == 1        # site1's web rule comes first
    assert first("10.100.17.7", "tcp", 22) == 2        # outside web-bc's dst: ssh-all
    assert first("10.100.0.7", "tcp", 22) == 2
    compile_rules(limited)                             # the matcher takes it as is


def test_a_limited_rule_outside_its_sites_matches_nothing(cfg):
    text = "rules:\n  - {name: x, match: {dst: 10.9.0.0/16}, wan: wan1, site: site1}\n"
    limited = limit_to_sites(parse(cfg, text), cfg.site_ranges)
    for src, dst in (("10.99.0.2", "10.9.0.1"), ("10.99.0.2", "10.100.16.1"),
                     ("10.99.0.2", "192.0.2.1"), ("fd00:99::2", "fd00::1")):
        assert classify(limited, PacketKey.make(src, dst, "udp", 1, 2)) is None


def test_unknown_site(cfg):
    [p] = problems(cfg, "rules:\n  - {name: x, wan: wan1, site: site9}\n")
    assert p.key == "rules[0].site" and p.value == "site9"
    assert "site0, site1, site2" in p.expected


def test_unknown_site_in_a_list(cfg):
    [p] = problems(cfg, "rules:\n  - {name: x, wan: wan1, site: [site0, nope]}\n")
    assert p.key == "rules[0].site[1]" and p.value == "nope"


def test_wan_missing_at_a_listed_site(cfg):
    [p] = problems(cfg, "rules:\n  - {name: x, wan: wan2, site: [site0, site2]}\n")
    assert p.key == "rules[0].wan" and p.value == "wan2" and "site site2: wan1" in p.expected


def test_fallback_role_missing_at_a_listed_site(cfg):
    [p] = problems(cfg, "rules:\n  - {name: x, wan: wan1, fallback: wan3, site: site2}\n")
    assert p.key == "rules[0].fallback" and "site site2" in p.expected


def test_empty_site_list(cfg):
    [p] = problems(cfg, "rules:\n  - {name: x, wan: wan1, site: []}\n")
    assert p.key == "rules[0].site" and "non-empty" in p.expected
