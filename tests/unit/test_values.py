"""Low-level values users write: addresses in the config, rule names (issue #11's
should-fix items), each refused at its line with why."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.config import parse_config
from steerd.rules import parse_rules
from steerd.schema import parse_network
from steerd.yamlsrc import ValidationError

CONFIG = """site: branch-01
ingress: [eth1]
tunnels:
  - name: pri-wan1
    ha_role: primary
    wan: wan1
    interface: ipsec1
    public_ip: PUBLIC
    probe_target: TARGET
    bandwidth: {down_mbps: 100}
"""


def config(public: str = "198.51.100.10", target: str = "169.254.10.2") -> str:
    return CONFIG.replace("PUBLIC", public).replace("TARGET", target)


@pytest.mark.parametrize("value,why", [
    ("127.0.0.1", "loopback"), ("127.1.2.3", "loopback"), ('"::1"', "loopback"),
    ("255.255.255.255", "broadcast"), ("224.0.0.1", "multicast"), ('"ff02::1"', "multicast"),
    ("0.0.0.0", "unspecified"), ('"::"', "unspecified"),
    ('"::ffff:198.51.100.10"', "did you mean 198.51.100.10?"),
])
@pytest.mark.parametrize("field", ["public_ip", "probe_target"])
def test_addresses_that_are_no_tunnel_host(field, value, why):
    text = config(**{"public" if field == "public_ip" else "target": value})
    with pytest.raises(ValidationError) as exc:
        parse_config(text, "site.yaml")
    [p] = exc.value.problems
    line = 8 if field == "public_ip" else 9
    assert (p.line, p.key) == (line, f"tunnels[0].{field}"), p
    assert "unicast" in p.expected and why in p.expected, p


@pytest.mark.parametrize("value", ["198.51.100.10", '"2001:db8::1"', "169.254.10.2", "10.255.255.255"])
def test_unicast_addresses_are_accepted(value):
    assert parse_config(config(target=value), "site.yaml").tunnels[0].probe_target


@pytest.mark.parametrize("name", ['"voice\\n"', '"voice\\r"', '"\\nvoice"', '"voi ce"', '""',
                                  "x" * 65])
def test_rule_names_are_the_whole_text(name):
    with pytest.raises(ValidationError) as exc:
        parse_rules(f"rules:\n  - name: {name}\n    wan: wan1\n", "r.yaml", {"wan1"})
    [p] = exc.value.problems
    assert (p.line, p.key) == (2, "rules[0].name"), p


def test_rule_name_limits_accepted():
    rs = parse_rules("rules:\n  - {name: " + "x" * 64 + ", wan: wan1}\n  - {name: 'a.b:c-d_e', "
                     "wan: wan1}\n", "r.yaml", {"wan1"})
    assert [len(r.name) for r in rs.rules] == [64, 9]


_OCTET = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "0255", "1a", ""]))


@settings(max_examples=500, deadline=None)
@given(octets=st.lists(_OCTET, min_size=3, max_size=5), plen=st.one_of(
    st.integers(0, 40).map(str), st.sampled_from(["08", "", "x", "-1"])))
def test_fast_ipv4_cidr_is_ipaddress(octets, plen):
    """schema.parse_network: the same network or the same refusal as ip_network(strict)."""
    text = ".".join(octets) + "/" + plen

    def outcome(fn):
        try:
            return fn(text)
        except ValueError:
            return "refused"
    assert outcome(parse_network) == outcome(lambda t: ipaddress.ip_network(t, strict=True))
