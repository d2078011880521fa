"""Hub mode config (form B, `sites:`): parses into per-site data, the single-site
form is one site, and every cross-site problem names both sites and lines."""
from __future__ import annotations

import time
from ipaddress import IPv4Network

import pytest

from steerd.config import HUB_DEFAULT_MAX_SITES, HUB_DEFAULT_SLOTS, Site, parse_config
from steerd.yamlsrc import ValidationError


def tun(name: str, iface: str, role: str = "primary", wan: str = "wan1", ip: str | None = None,
        down: float = 100) -> str:
    ip = ip or f"198.51.{sum(map(ord, iface)) % 256}.{len(iface) + ord(iface[-1]) % 200}"
    return (f"      - {{name: {name}, ha_role: {role}, wan: {wan}, interface: {iface}, "
            f"public_ip: {ip}, probe_target: 169.254.0.2, bandwidth: {{down_mbps: {down}}}}}\n")


def site(name: str, ranges: str | None, *tunnels: str, extra: str = "") -> str:
    out = f"  - site: {name}\n"
    if ranges is not None:
        out += f"    network_ranges: {ranges}\n"
    return out + extra + "    tunnels:\n" + "".join(tunnels)


def hub(*sites: str, top: str = "") -> str:
    return "ingress: [eth1]\n" + top + "sites:\n" + "".join(sites)


A = site("a", "{lan: 10.21.0.0/16}", tun("a1", "ta1"), tun("a2", "ta2", "secondary"))
B = site("b", "{lan: 10.22.0.0/16, lan6: 'fd00:22::/48'}", tun("b1", "tb1"), tun("b2", "tb2", wan="wan2"))


def problems(text: str):
    with pytest.raises(ValidationError) as exc:
        parse_config(text, "hub.yaml")
    return exc.value.problems


def line_of(text: str, needle: str, nth: int = 0) -> int:
    lines = [i for i, ln in enumerate(text.splitlines(), 1) if needle in ln]
    return lines[nth]


# ------------------------------------------------------------------ valid

def test_hub_form_parses_per_site():
    c = parse_config(hub(A, B, top="failback_hold: 12s\n"))
    assert [s.name for s in c.sites] == ["a", "b"] and c.hub
    assert [t.name for t in c.tunnels] == ["a1", "a2", "b1", "b2"]
    assert [c.site_of(i) for i in range(4)] == [0, 0, 1, 1]
    assert [c.position_of(i) for i in range(4)] == [0, 1, 0, 1]
    assert c.sites[1].ranges[0] == IPv4Network("10.22.0.0/16")
    assert [s.failback_hold for s in c.sites] == [12.0, 12.0]   # the global one by default
    assert c.dataplane.slots == HUB_DEFAULT_SLOTS and c.dataplane.max_sites == HUB_DEFAULT_MAX_SITES
    assert c.wans == {"wan1", "wan2"} and c.site_index("b") == 1


def test_per_site_failback_hold_overrides_the_global_one():
    a = site("a", "{lan: 10.21.0.0/16}", tun("a1", "ta1"), extra="    failback_hold: 5s\n")
    c = parse_config(hub(a, B))
    assert [s.failback_hold for s in c.sites] == [5.0, 30.0]


def test_public_ip_and_wan_may_repeat_across_sites():
    b = site("b", "{lan: 10.22.0.0/16}", tun("b1", "tb1", ip="198.51.100.1"))
    assert len(parse_config(hub(A, b)).tunnels) == 3


def test_single_site_form_is_one_site():
    text = ("site: branch-01\ningress: [eth1]\nnetwork_ranges: {lan: 10.20.0.0/16}\n"
            "failback_hold: 7s\ntunnels:\n" + tun("p1", "ipsec1").replace("      -", "  -"))
    c = parse_config(text)
    assert c.sites == (Site("branch-01", (("lan", IPv4Network("10.20.0.0/16")),), c.tunnels, 7.0),)
    assert not c.hub and c.site == "branch-01" and c.dataplane.max_sites == 1
    assert c.dataplane.slots == 4096


def test_explicit_dataplane_sizes_are_kept_in_hub_form():
    c = parse_config(hub(A, B, top="dataplane: {slots: 256, max_sites: 2}\n"))
    assert (c.dataplane.slots, c.dataplane.max_sites) == (256, 2)


def test_a_thousand_sites_check_quickly():
    sites = "".join(site(f"s{i}", f"{{lan: 10.{i // 256}.{i % 256}.0/24}}",
                         tun(f"s{i}-1", f"t{i}a"), tun(f"s{i}-2", f"t{i}b", wan="wan2"),
                         tun(f"s{i}-3", f"t{i}c", wan="wan3")) for i in range(1000))
    t0 = time.perf_counter()
    c = parse_config(hub(sites))
    assert len(c.sites) == 1000 and len(c.tunnels) == 3000
    assert time.perf_counter() - t0 < 10


# ------------------------------------------------------------------ errors

def test_overlapping_ranges_name_both_sites_and_lines():
    b = site("b", "{lan: 10.22.0.0/16, x: 10.21.5.0/24}", tun("b1", "tb1"))
    text = hub(A, b)
    [p] = problems(text)
    assert p.line == line_of(text, "10.21.5.0/24") and p.key == "sites[1].network_ranges.x"
    assert "'b'" in p.expected and "'a'" in p.expected
    assert f"line {line_of(text, '10.21.0.0/16')}" in p.expected


def test_overlap_found_beside_a_same_site_container():
    # b's /24 sits in b's own /8 (fine) and in a's /12 (not): the sweep must not
    # stop at the innermost same-site prefix
    a = site("a", "{lan: 10.16.0.0/12}", tun("a1", "ta1"))
    b = site("b", "{big: 10.0.0.0/8, x: 10.17.1.0/24}", tun("b1", "tb1"))
    keys = {p.key for p in problems(hub(a, b))}
    assert "sites[1].network_ranges.x" in keys and "sites[0].network_ranges.lan" in keys


def test_ipv6_overlap_and_identical_ranges():
    d = site("d", "{lan: 10.21.0.0/16}", tun("d1", "td1"))
    c = site("c", "{v6: 'fd00:22:0:1::/64'}", tun("c1", "tc1"))
    ps = problems(hub(A, B, d, c))
    assert {p.key for p in ps} == {"sites[2].network_ranges.lan", "sites[3].network_ranges.v6"}
    assert all("overlaps" in p.expected for p in ps)


def test_route_based_site_beside_others_names_both():
    c = site("c", None, tun("c1", "tc1"))
    text = hub(A, c)
    [p] = problems(text)
    assert p.key == "sites[1].network_ranges" and p.line == line_of(text, "site: c")
    assert "route-based" in p.expected and "'c'" in p.expected and "'a'" in p.expected
    assert f"line {line_of(text, 'site: a')}" in p.expected


def test_a_lone_route_based_site_is_fine():
    c = parse_config(hub(site("c", None, tun("c1", "tc1"))))
    assert [str(n) for n in c.sites[0].ranges] == ["0.0.0.0/0", "::/0"]


@pytest.mark.parametrize("attr", ["name", "interface"])
def test_duplicate_tunnel_name_or_interface_across_sites(attr):
    b = site("b", "{lan: 10.22.0.0/16}",
             tun("a1" if attr == "name" else "b1", "ta2" if attr == "interface" else "tb1"))
    text = hub(A, b)
    [p] = problems(text)
    assert p.key == f"sites[1].tunnels[0].{attr}" and p.line == line_of(text, "site: b") + 3
    want = "a1" if attr == "name" else "ta2"
    first = line_of(text, want)
    assert f"line {first}" in p.expected and "'a'" in p.expected and "'b'" in p.expected


def test_duplicate_within_a_site_keeps_the_single_site_message():
    a = site("a", "{lan: 10.21.0.0/16}", tun("a1", "ta1"), tun("a1", "ta2", wan="wan2"))
    [p] = problems(hub(a))
    assert p.key == "sites[0].tunnels[1].name" and "sites[0].tunnels[0]" in p.expected


def test_duplicate_site_name():
    text = hub(A, site("a", "{lan: 10.22.0.0/16}", tun("b1", "tb1")))
    [p] = problems(text)
    assert p.key == "sites[1].site" and f"line {line_of(text, 'site: a')}" in p.expected


def test_top_level_site_keys_beside_sites():
    text = "site: x\nnetwork_ranges: {lan: 10.9.0.0/16}\n" + hub(A)
    ps = problems(text)
    assert {(p.key, p.line) for p in ps} == {("site", 1), ("network_ranges", 2)}
    assert all("hub form" in p.expected for p in ps)


def test_neither_form():
    ps = problems("ingress: [eth1]\n")
    assert {p.key for p in ps} == {"site", "tunnels"}
    assert all("sites:" in p.expected for p in ps)


@pytest.mark.parametrize("value", ["[]", "x", "{a: 1}"])
def test_sites_must_be_a_non_empty_list(value):
    [p] = problems(f"ingress: [eth1]\nsites: {value}\n")
    assert p.key == "sites" and "list of sites" in p.expected


def test_site_needs_name_and_tunnels_and_known_keys():
    text = hub("  - network_ranges: {lan: 10.21.0.0/16}\n    tunel: []\n")
    keys = {p.key for p in problems(text)}
    assert keys == {"sites[0].site", "sites[0].tunnels", "sites[0].tunel"}


def test_more_sites_than_max_sites():
    text = hub(A, B, top="dataplane: {max_sites: 1}\n")
    [p] = problems(text)
    assert p.key == "dataplane.max_sites" and p.value == 2 and p.line == 2


def test_ingress_is_a_sites_tunnel():
    text = hub(A, B).replace("ingress: [eth1]", "ingress: [tb2]")
    [p] = problems(text)
    assert p.key == "ingress[0]" and "sites[1].tunnels[1].interface" in p.expected


def test_per_site_role_limits_still_apply():
    a = site("a", "{lan: 10.21.0.0/16}", *(tun(f"a{i}", f"ta{i}", wan=f"w{i}") for i in range(4)))
    [p] = problems(hub(a))
    assert p.key == "sites[0].tunnels[3].ha_role" and "at most 3" in p.expected


def test_steerctl_config_check(tmp_path):
    from click.testing import CliRunner

    from steerd.cli import main
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(hub(A, B))
    bad.write_text(hub(A, site("b", "{lan: 10.21.1.0/24}", tun("b1", "tb1"))))
    ok = CliRunner().invoke(main, ["config", "check", str(good)])
    assert ok.exit_code == 0 and "valid (2 sites, 4 tunnels)" in ok.output
    res = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert res.exit_code == 2 and "overlaps site 'a'" in res.output and f"{bad}:" in res.output
