"""Site config: the contract's format parses into the dataclasses, and every bad
file is refused with problems that point at the right line and key."""
from __future__ import annotations

import copy
import math
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerd.config import (Bandwidth, DataplaneConfig, HealthConfig, ProbeConfig,
                           SiteConfig, Tunnel, load_config, parse_config)
from steerd.ipsec import Identity, IpsecConfig, IpsecTunnel
from steerd.schema import valid_ifname
from steerd.units import format_duration, parse_duration, parse_percent
from steerd.yamlsrc import Problem, ValidationError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "steerd.example.yaml"
MARK = "#!"   # marks the line a bad-config case expects its problem on


# ------------------------------------------------------------------ helpers

def tunnel(name="pri-wan1", ha_role="primary", wan="wan1", interface="ipsec1",
           public_ip="198.51.100.10", probe_target="169.254.10.2",
           bandwidth="{down_mbps: 100}", extra="") -> str:
    """One tunnel list item; pass None to leave a key out, append MARK to mark a line."""
    fields = dict(name=name, ha_role=ha_role, wan=wan, interface=interface,
                  public_ip=public_ip, probe_target=probe_target, bandwidth=bandwidth)
    lines = [f"{k}: {v}" for k, v in fields.items() if v is not None]
    lines += [x for x in extra.splitlines() if x]
    return "  - " + "\n    ".join(lines) + "\n"


T1 = tunnel()
T2 = tunnel("pri-wan2", wan="wan2", interface="ipsec2", public_ip="203.0.113.20")
T3 = tunnel("pri-wan3", wan="wan3", interface="ipsec3", public_ip="192.0.2.30")
S1 = tunnel("sec-wan1", "secondary", interface="ipsec4", public_ip="198.51.100.11")


def cfg(*tunnels: str, top: str = "", site="site: branch-01\n", ingress="ingress: [eth1]\n",
        header="tunnels:\n") -> str:
    body = "".join(tunnels) if tunnels else T1
    return site + ingress + top + (header + body if header is not None else "")


def marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, f"case must mark exactly one line:\n{text}"
    return lines[0]


def problems_of(text: str, path: str = "site.yaml") -> list[Problem]:
    with pytest.raises(ValidationError) as exc:
        parse_config(text, path)
    return exc.value.problems


def numbered(text: str) -> str:
    return "\n".join(f"{i:3} {line}" for i, line in enumerate(text.splitlines(), 1))


# -------------------------------------------------------------- valid files

FULL = """\
site: branch-01
ingress: [eth1, eth2]
network_ranges:
  lan: 10.20.0.0/16
  dc: [10.30.0.0/16, "2001:db8:30::/48"]
probe:
  interval: 500ms
  timeout: 2s
  window: 20
health:
  loss_pct: 5%
  jitter_ms: 40
  latency_ms: 1s
  suspect_factor: 4
  suspect_floor: 20ms
  confirm_interval: 200ms
  confirm_misses: 2
  recover_successes: 7
  initial_state: down
rebalance_interval: 1m
rebalance_threshold: 15%
failback_hold: 0
failback: migrate
metrics: {listen: "[::1]:9470"}
control_socket: /run/steerd/ctl.sock
control_group: netops
rules_file: /etc/steerd/rules.yaml
events: {file: /var/log/steerd/events.jsonl, keep: 500}
dataplane:
  mark_mask: 0x00700000
  table_base: 3000
  rule_priority: 500
  slots: 1024
  flow_table_size: 2048
  flow_idle_timeout: 2m
  bpffs: /sys/fs/bpf/steerd-test
ipsec:
  connection_mode: responder-only
  local_id: {fqdn: pop.example.net}
  secrets_file: /etc/steerd/ipsec.secrets
tunnels:
  - name: pri-wan1
    ha_role: primary
    wan: wan1
    interface: ipsec1
    public_ip: 198.51.100.10
    probe_target: 169.254.10.2
    bandwidth: {down_mbps: 100, up_mbps: 20, cap: true}
    preference: 2
  - name: sec-wan1
    ha_role: secondary
    wan: wan1
    interface: xfrm-2
    public_ip: "2001:db8::10"
    probe_target: "fe80::2"
    bandwidth:
      down_mbps: 50.5
      cap: 40
"""


def test_full_config_parses_into_exact_dataclasses():
    expected = SiteConfig(
        path="full.yaml",
        site="branch-01",
        ingress=("eth1", "eth2"),
        network_ranges=(("lan", IPv4Network("10.20.0.0/16")),
                        ("dc", IPv4Network("10.30.0.0/16")),
                        ("dc", IPv6Network("2001:db8:30::/48"))),
        probe=ProbeConfig(interval=0.5, timeout=2.0, window=20),
        health=HealthConfig(loss_pct=5.0, jitter_ms=40.0, latency_ms=1000.0,
                            suspect_factor=4.0, suspect_floor=0.02, confirm_interval=0.2,
                            confirm_misses=2, recover_successes=7, initial_state="down"),
        rebalance_interval=60.0,
        rebalance_threshold=0.15,
        failback_hold=0.0,
        failback="migrate",
        metrics_listen="[::1]:9470",
        control_socket="/run/steerd/ctl.sock",
        control_group="netops",
        rules_file="/etc/steerd/rules.yaml",
        events_file="/var/log/steerd/events.jsonl",
        events_keep=500,
        tunnels=(
            Tunnel("pri-wan1", "primary", "wan1", "ipsec1", IPv4Address("198.51.100.10"),
                   IPv4Address("169.254.10.2"), Bandwidth(100.0, 20.0, 100.0), 2.0, line=42),
            Tunnel("sec-wan1", "secondary", "wan1", "xfrm-2", IPv6Address("2001:db8::10"),
                   IPv6Address("fe80::2"), Bandwidth(50.5, None, 40.0), 1.0, line=50),
        ),
        dataplane=DataplaneConfig(mark_mask=0x00700000, table_base=3000, rule_priority=500,
                                  slots=1024, flow_table_size=2048, flow_idle_timeout=120.0,
                                  bpffs="/sys/fs/bpf/steerd-test"),
        ipsec=IpsecConfig(local_id=Identity("fqdn", "pop.example.net"),
                          secrets_file="/etc/steerd/ipsec.secrets"),
    )
    assert parse_config(FULL, "full.yaml") == expected


def test_minimal_config_takes_every_default():
    c = parse_config(cfg())
    assert c.path == "<string>" and c.site == "branch-01" and c.ingress == ("eth1",)
    assert c.network_ranges == ()
    assert c.probe == ProbeConfig() == ProbeConfig(1.0, 1.0, 10)
    assert c.health == HealthConfig()
    assert (c.health.loss_pct, c.health.jitter_ms, c.health.latency_ms) == (3.0, 30.0, 600.0)
    assert c.health.initial_state == "up"
    assert c.dataplane == DataplaneConfig()
    assert (c.rebalance_interval, c.rebalance_threshold, c.failback_hold, c.failback) == \
        (10.0, 0.10, 30.0, "new-flows")
    assert c.metrics_listen == "127.0.0.1:9469"
    assert c.control_socket == "/run/steerd/steerd.sock" and c.control_group is None
    assert c.rules_file is None and c.events_file is None and c.events_keep == 1000
    assert c.ipsec is None
    assert c.tunnels == (Tunnel("pri-wan1", "primary", "wan1", "ipsec1",
                                IPv4Address("198.51.100.10"), IPv4Address("169.254.10.2"),
                                Bandwidth(100.0), 1.0, line=4),)


def test_empty_sections_mean_defaults():
    c = parse_config(cfg(top="network_ranges:\nprobe:\nhealth:\ndataplane:\nmetrics:\nevents:\n"))
    assert c.network_ranges == () and c.probe == ProbeConfig() and c.health == HealthConfig()
    assert c.dataplane == DataplaneConfig() and c.metrics_listen == "127.0.0.1:9469"


def test_route_based_vpn_ranges_cover_everything():
    assert parse_config(cfg()).ranges == [IPv4Network("0.0.0.0/0"), IPv6Network("::/0")]
    c = parse_config(cfg(top="network_ranges: {lan: 10.20.0.0/16}\n"))
    assert c.ranges == [IPv4Network("10.20.0.0/16")]


def test_lookups_by_name_role_and_wan():
    c = parse_config(cfg(T1, T2, S1))
    assert c.tunnel("pri-wan2").interface == "ipsec2"
    assert c.index_of("sec-wan1") == 2
    assert [t.name for t in c.by_role("primary")] == ["pri-wan1", "pri-wan2"]
    assert [t.name for t in c.by_role("secondary")] == ["sec-wan1"]
    assert c.wans == {"wan1", "wan2"}
    with pytest.raises(KeyError):
        c.tunnel("nope")
    with pytest.raises(KeyError):
        c.index_of("nope")


def test_marks_and_tables_per_tunnel_index():
    dp = DataplaneConfig()
    assert [dp.mark_of(i) for i in range(6)] == [i << 24 for i in range(1, 7)]
    assert all(dp.mark_of(i) & ~dp.mark_mask == 0 for i in range(6))
    assert [dp.table_of(i) for i in range(6)] == list(range(2101, 2107))
    assert DataplaneConfig(mark_mask=0x70).mark_of(5) == 6 << 4
    with pytest.raises(IndexError):
        dp.mark_of(6)
    with pytest.raises(IndexError):
        dp.table_of(-1)


def test_ingress_single_string_is_a_one_item_list():
    assert parse_config(cfg(ingress="ingress: eth1\n")).ingress == ("eth1",)


def test_bandwidth_cap_forms():
    def bw(text):
        return parse_config(cfg(tunnel(bandwidth=text))).tunnels[0].bandwidth
    assert bw("{down_mbps: 100, cap: true}") == Bandwidth(100.0, None, 100.0)
    assert bw("{down_mbps: 100, cap: 80}") == Bandwidth(100.0, None, 80.0)
    assert bw("{down_mbps: 100, cap: false}") == Bandwidth(100.0, None, None)
    assert bw("{down_mbps: 100, up_mbps: 5}") == Bandwidth(100.0, 5.0, None)


def test_same_wan_in_both_roles_and_mark_mask_as_string_are_fine():
    c = parse_config(cfg(T1, S1, top='dataplane: {mark_mask: "0x0F000000"}\n'))
    assert [t.wan for t in c.tunnels] == ["wan1", "wan1"]
    assert c.dataplane.mark_mask == 0x0F000000


def test_three_tunnels_per_role_is_the_limit_not_an_error():
    s = [tunnel(f"sec{i}", "secondary", f"wan{i}", f"ipsec{i + 4}", f"192.0.2.{i}")
         for i in range(1, 4)]
    assert len(parse_config(cfg(T1, T2, T3, *s)).tunnels) == 6


def test_relative_rules_and_events_files_are_next_to_the_config(tmp_path):
    path = tmp_path / "steerd.yaml"
    path.write_text(cfg(top="rules_file: rules.yaml\nevents: {file: ev/events.jsonl}\n"))
    c = load_config(str(path))
    assert c.rules_file == str(tmp_path / "rules.yaml")
    assert c.events_file == str(tmp_path / "ev" / "events.jsonl")


def test_ipsec_section_is_typed_and_config_stays_hashable():
    c = parse_config(cfg(top="ipsec:\n  local_id: {fqdn: gw.example.net}\n"
                             "  secrets_file: /etc/x\n  proposals: {init: automatic, auth: automatic}\n"
                             "  dpd_delay: 30s\n  tunnels: {pri-wan1: {if_id: 7}}\n"))
    assert c.ipsec == IpsecConfig(local_id=Identity("fqdn", "gw.example.net"), secrets_file="/etc/x",
                                  dpd_delay=30.0, tunnels={"pri-wan1": IpsecTunnel(if_id=7)})
    assert c.ipsec.if_ids(["pri-wan1", "pri-wan2"]) == {"pri-wan1": 7, "pri-wan2": 2}
    hash(c)


def test_ipsec_problems_come_with_the_rest_of_the_file():
    with pytest.raises(ValidationError) as exc:
        parse_config(cfg(top="ipsec:\n  psk_file: /etc/x\n"))
    keys = {p.key for p in exc.value.problems}
    assert {"ipsec.local_id", "ipsec.secrets_file", "ipsec.psk_file"} <= keys


def test_example_config_parses():
    c = load_config(str(EXAMPLE))
    assert [t.ha_role for t in c.tunnels] == ["primary"] * 3 + ["secondary"] * 3
    assert c.wans == {"wan1", "wan2", "wan3"}
    assert len({t.public_ip for t in c.tunnels}) == 6
    assert c.health == HealthConfig() and c.dataplane == DataplaneConfig()


def test_problem_lines_are_real_lines_of_the_file():
    c = parse_config(FULL)
    lines = FULL.splitlines()
    assert [lines[t.line - 1].strip() for t in c.tunnels] == \
        ["- name: pri-wan1", "- name: sec-wan1"]


# ---------------------------------------------------------------- bad files

def _dup_bw():
    return cfg(tunnel(bandwidth="{down_mbps: 100}"), tunnel(
        "pri-wan2", wan="wan2", interface="ipsec2", public_ip="203.0.113.20",
        bandwidth="\n      down_mbps: 50\n      down_mbps: 60  " + MARK))


BAD: list[tuple[str, str, str, str]] = [
    # (id, text, key, fragment of `expected`)
    ("missing-site", cfg(site="", ingress="ingress: [eth1]  #!\n"), "site", "required"),
    ("site-number", cfg(site="site: 42  #!\n"), "site", "string"),
    ("site-bad-chars", cfg(site='site: "branch 01"  #!\n'), "site", "letters"),
    ("missing-ingress", cfg(site="site: b  #!\n", ingress=""), "ingress", "required"),
    ("ingress-empty", cfg(ingress="ingress: []  #!\n"), "ingress", "non-empty"),
    ("ingress-long-ifname", cfg(ingress="ingress: [averyveryverylongname0]  #!\n"),
     "ingress[0]", "15 characters"),
    ("ingress-slash", cfg(ingress="ingress: eth/1  #!\n"), "ingress", "interface name"),
    ("ingress-duplicate", cfg(ingress="ingress:\n  - eth1\n  - eth1  #!\n"), "ingress[1]",
     "line 3"),
    ("ingress-is-tunnel", cfg(ingress="ingress: [ipsec1]  #!\n"), "ingress[0]", "tunnels[0]"),
    ("missing-tunnels", cfg(site="site: b  #!\n", header=None), "tunnels", "required"),
    ("tunnels-empty", cfg("", header="tunnels: []  #!\n"), "tunnels", "1 to 6"),
    ("tunnels-mapping", cfg("  name: x\n", header="tunnels:  #!\n"), "tunnels", "list"),
    ("tunnel-not-mapping", cfg("  - pri-wan1  #!\n"), "tunnels[0]", "mapping"),
    ("four-primary", cfg(T1, T2, T3, tunnel("pri4", wan="wan4", interface="ipsec4",
                                            public_ip="192.0.2.44", ha_role="primary  #!")),
     "tunnels[3].ha_role", "at most 3"),
    ("four-secondary", cfg(T1, *[tunnel(f"s{i}", "secondary", f"wan{i}", f"if{i}", f"192.0.2.{i}")
                                 for i in range(1, 4)],
                           tunnel("s4", "secondary  #!", "wan4", "if4", "192.0.2.4")),
     "tunnels[4].ha_role", "at most 3"),
    ("no-primary", cfg(S1, header="tunnels:  #!\n"), "tunnels", "primary"),
    ("bad-role", cfg(tunnel(ha_role="tertiary  #!")), "tunnels[0].ha_role", "primary, secondary"),
    ("duplicate-name", cfg(T1, tunnel("pri-wan1  #!", wan="wan2", interface="ipsec2",
                                      public_ip="203.0.113.20")), "tunnels[1].name", "line 4"),
    ("duplicate-interface", cfg(T1, tunnel("pri-wan2", wan="wan2", interface="ipsec1  #!",
                                           public_ip="203.0.113.20")),
     "tunnels[1].interface", "line 7"),
    ("duplicate-public-ip", cfg(T1, tunnel("pri-wan2", wan="wan2", interface="ipsec2",
                                           public_ip="198.51.100.10  #!")),
     "tunnels[1].public_ip", "tunnels[0]"),
    ("duplicate-public-ipv6-spelled-differently",
     cfg(tunnel(public_ip='"2001:db8::1"'), tunnel("pri-wan2", wan="wan2", interface="ipsec2",
                                                   public_ip='"2001:DB8:0::1"  #!')),
     "tunnels[1].public_ip", "unique"),
    ("wan-repeated-in-role", cfg(T1, tunnel("pri-wan2", wan="wan1  #!", interface="ipsec2",
                                            public_ip="203.0.113.20")),
     "tunnels[1].wan", "among primary"),
    ("missing-bandwidth", cfg("  - name: t  #!\n    ha_role: primary\n    wan: w\n"
                              "    interface: i\n    public_ip: 192.0.2.1\n"
                              "    probe_target: 192.0.2.2\n"),
     "tunnels[0].bandwidth", "required"),
    ("down-zero", cfg(tunnel(bandwidth="{down_mbps: 0}  #!")),
     "tunnels[0].bandwidth.down_mbps", "> 0"),
    ("down-negative", cfg(tunnel(bandwidth="{down_mbps: -5}  #!")),
     "tunnels[0].bandwidth.down_mbps", "> 0"),
    ("up-zero", cfg(tunnel(bandwidth="{down_mbps: 10, up_mbps: 0}  #!")),
     "tunnels[0].bandwidth.up_mbps", "> 0"),
    ("down-bool", cfg(tunnel(bandwidth="{down_mbps: true}  #!")),
     "tunnels[0].bandwidth.down_mbps", "number"),
    ("down-string", cfg(tunnel(bandwidth='{down_mbps: "100"}  #!')),
     "tunnels[0].bandwidth.down_mbps", "number"),
    ("down-missing", cfg(tunnel(bandwidth="  #!\n      up_mbps: 10")),
     "tunnels[0].bandwidth.down_mbps", "required"),
    ("bandwidth-scalar", cfg(tunnel(bandwidth="100  #!")), "tunnels[0].bandwidth", "mapping"),
    ("cap-above-down", cfg(tunnel(bandwidth="\n      down_mbps: 100\n      cap: 150  #!")),
     "tunnels[0].bandwidth.cap", "<= down_mbps"),
    ("cap-word", cfg(tunnel(bandwidth="{down_mbps: 100, cap: fast}  #!")),
     "tunnels[0].bandwidth.cap", "true, false"),
    ("preference-zero", cfg(tunnel(extra="preference: 0  #!")), "tunnels[0].preference", "> 0"),
    ("preference-too-big", cfg(tunnel(extra="preference: 101  #!")),
     "tunnels[0].preference", "<= 100"),
    ("unknown-tunnel-key", cfg(tunnel(extra="prefernce: 2  #!")),
     "tunnels[0].prefernce", "did you mean 'preference'"),
    ("unknown-top-key", cfg(top="metric: {listen: 1.2.3.4:5}  #!\n"), "metric", "metrics"),
    ("unknown-nested-key", cfg(top="probe:\n  intervall: 1s  #!\n"), "probe.intervall",
     "interval, timeout, window"),
    ("bgp-top-level", cfg(top="bgp:  #!\n  asn: 65001\n"), "bgp", "not supported"),
    ("bgp-in-tunnel", cfg(tunnel(extra="bgp: {asn: 65001}  #!")), "tunnels[0].bgp",
     "not supported"),
    ("bad-cidr", cfg(top="network_ranges:\n  lan: 10.20.0.0/33  #!\n"), "network_ranges.lan",
     "prefix"),
    ("host-bits-set", cfg(top="network_ranges:\n  lan: 10.20.0.1/16  #!\n"),
     "network_ranges.lan", "host bits set (did you mean 10.20.0.0/16?)"),
    ("bad-prefix-in-list",
     cfg(top="network_ranges:\n  lan:\n    - 10.0.0.0/8\n    - nonsense  #!\n"),
     "network_ranges.lan[1]", "prefix"),
    ("ranges-as-list", cfg(top="network_ranges: [10.0.0.0/8]  #!\n"), "network_ranges",
     "mapping"),
    ("bad-public-ip", cfg(tunnel(public_ip="300.1.1.1  #!")), "tunnels[0].public_ip", "address"),
    ("public-ip-number", cfg(tunnel(public_ip="12345  #!")), "tunnels[0].public_ip", "quote"),
    ("probe-target-multicast", cfg(tunnel(probe_target="224.0.0.1  #!")),
     "tunnels[0].probe_target", "unicast"),
    ("interface-too-long", cfg(tunnel(interface="ipsec-tunnel-number-1  #!")),
     "tunnels[0].interface", "15 characters"),
    ("interface-space", cfg(tunnel(interface='"ipsec 1"  #!')), "tunnels[0].interface",
     "whitespace"),
    ("name-list", cfg(tunnel(name="[a, b]  #!")), "tunnels[0].name", "string"),
    ("duplicate-yaml-key", cfg(tunnel(extra="name: again  #!")), "tunnels[0].name", "once"),
    ("duplicate-yaml-key-nested", _dup_bw(), "tunnels[1].bandwidth.down_mbps", "once"),
    ("bad-duration", cfg(top="probe: {interval: fast}  #!\n"), "probe.interval", "duration"),
    ("duration-with-bad-unit", cfg(top="probe:\n  timeout: 3 sec  #!\n"), "probe.timeout",
     "duration"),
    ("interval-too-short", cfg(top="probe:\n  interval: 50ms  #!\n"), "probe.interval",
     ">= 100ms"),
    ("interval-too-long", cfg(top="probe:\n  interval: 11s  #!\n"), "probe.interval", "<= 10s"),
    ("interval-bool", cfg(top="probe:\n  interval: yes  #!\n"), "probe.interval", "duration"),
    ("timeout-zero", cfg(top="probe:\n  timeout: 0s  #!\n"), "probe.timeout", "> 0s"),
    ("window-zero", cfg(top="probe:\n  window: 0  #!\n"), "probe.window", "1 to 1000"),
    ("window-float", cfg(top="probe:\n  window: 1.5  #!\n"), "probe.window", "integer"),
    ("probe-scalar", cfg(top="probe: 1s  #!\n"), "probe", "mapping"),
    ("rebalance-too-fast", cfg(top="rebalance_interval: 500ms  #!\n"), "rebalance_interval",
     ">= 1s"),
    ("rebalance-too-slow", cfg(top="rebalance_interval: 2h  #!\n"), "rebalance_interval",
     "<= 1h"),
    ("failback-hold-negative", cfg(top="failback_hold: -1  #!\n"), "failback_hold", "duration"),
    ("failback-mode", cfg(top="failback: immediately  #!\n"), "failback", "new-flows, migrate"),
    ("threshold-bare-percent", cfg(top="rebalance_threshold: 10  #!\n"), "rebalance_threshold",
     "fraction"),
    ("loss-over-100", cfg(top="health:\n  loss_pct: 150%  #!\n"), "health.loss_pct", "0 to 100"),
    ("jitter-bool", cfg(top="health:\n  jitter_ms: true  #!\n"), "health.jitter_ms",
     "milliseconds"),
    ("initial-state", cfg(top="health: {initial_state: sideways}  #!\n"),
     "health.initial_state", "up, down"),
    ("confirm-misses-zero", cfg(top="health:\n  confirm_misses: 0  #!\n"),
     "health.confirm_misses", "1 to 100"),
    ("suspect-factor-one", cfg(top="health:\n  suspect_factor: 1  #!\n"),
     "health.suspect_factor", "> 1"),
    ("mask-not-contiguous", cfg(top="dataplane:\n  mark_mask: 0x0F0F0000  #!\n"),
     "dataplane.mark_mask", "contiguous"),
    ("mask-too-narrow", cfg(top="dataplane:\n  mark_mask: 0x3  #!\n"),
     "dataplane.mark_mask", "3 bits"),
    ("mask-zero", cfg(top="dataplane:\n  mark_mask: 0  #!\n"), "dataplane.mark_mask", "mask"),
    ("mask-over-32-bits", cfg(top="dataplane:\n  mark_mask: 0x1F00000000  #!\n"),
     "dataplane.mark_mask", "32-bit"),
    ("table-base-hits-reserved", cfg(top="dataplane:\n  table_base: 250  #!\n"),
     "dataplane.table_base", "253"),
    ("table-base-negative", cfg(top="dataplane:\n  table_base: -7  #!\n"),
     "dataplane.table_base", "table_base"),
    ("slots-not-power-of-two", cfg(top="dataplane:\n  slots: 1000  #!\n"), "dataplane.slots",
     "power of two"),
    ("slots-too-few", cfg(top="dataplane:\n  slots: 32  #!\n"), "dataplane.slots", "64"),
    ("rule-priority", cfg(top="dataplane:\n  rule_priority: 32766  #!\n"),
     "dataplane.rule_priority", "32765"),
    ("flow-table-small", cfg(top="dataplane:\n  flow_table_size: 100  #!\n"),
     "dataplane.flow_table_size", "1024"),
    ("bpffs-relative", cfg(top="dataplane:\n  bpffs: bpf/steerd  #!\n"), "dataplane.bpffs",
     "absolute"),
    ("listen-no-port", cfg(top="metrics:\n  listen: localhost  #!\n"), "metrics.listen",
     "host:port"),
    ("listen-ipv6-unbracketed", cfg(top='metrics: {listen: "::1:9469"}  #!\n'),
     "metrics.listen", "[::1]"),
    ("listen-port-range", cfg(top='metrics: {listen: "0.0.0.0:70000"}  #!\n'),
     "metrics.listen", "65535"),
    ("control-socket-relative", cfg(top="control_socket: steerd.sock  #!\n"), "control_socket",
     "absolute"),
    ("events-keep-zero", cfg(top="events:\n  keep: 0  #!\n"), "events.keep", "1 to"),
    ("ipsec-list", cfg(top="ipsec: [a]  #!\n"), "ipsec", "mapping"),
    ("yaml-syntax", cfg(top="probe: interval: 1s  #!\n"), "<yaml>", "YAML"),
    ("yaml-bad-tag", cfg(site="site: !!python/object:os.system x  #!\n"), "<yaml>", "YAML"),
    ("root-is-list", "- site: b  #!\n", "<root>", "mapping"),
]


@pytest.mark.parametrize("text,key,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_is_rejected_at_its_line_and_key(text, key, fragment):
    line = marked_line(text)
    problems = problems_of(text)
    hits = [p for p in problems if p.key == key and p.line == line]
    assert hits, f"no problem at line {line} key {key!r}:\n{numbered(text)}\n" + \
        "\n".join(map(str, problems))
    assert all(p.file == "site.yaml" for p in problems)
    assert any(fragment in p.expected for p in hits), [p.expected for p in hits]


def test_enough_distinct_bad_configs():
    assert len(BAD) >= 40 and len({c[0] for c in BAD}) == len(BAD)


def test_duplicate_names_the_second_occurrence_and_the_first_line():
    text = cfg(T1, T2, tunnel("pri-wan1", wan="wan3", interface="ipsec3",
                              public_ip="192.0.2.30"))
    [p] = problems_of(text)
    assert (p.key, p.line, p.value) == ("tunnels[2].name", 18, "pri-wan1")
    assert "tunnels[0] at line 4" in p.expected


def test_three_independent_errors_are_all_reported():
    text = cfg(T1, tunnel("pri-wan2", wan="wan2", interface="ipsec2",
                          public_ip="198.51.100.10"),
               site='site: "bad site"\n', top="probe:\n  interval: 20s\n")
    problems = problems_of(text)
    assert [(p.line, p.key) for p in problems] == \
        [(1, "site"), (4, "probe.interval"), (17, "tunnels[1].public_ip")], \
        "\n".join(map(str, problems))


def test_problem_value_is_the_offending_value():
    [p] = problems_of(cfg(tunnel(bandwidth="{down_mbps: -5}")))
    assert p.value == -5
    [p] = problems_of(cfg(top="bogus: 1\n"))
    assert p.value == "bogus" and "site, ingress" in p.expected


def test_missing_file_is_a_problem_at_line_zero(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ValidationError) as exc:
        load_config(missing)
    [p] = exc.value.problems
    assert (p.file, p.line) == (missing, 0)


def test_directory_is_not_a_config(tmp_path):
    with pytest.raises(ValidationError) as exc:
        load_config(str(tmp_path))
    assert exc.value.problems[0].line == 0


def test_empty_file_reports_required_keys():
    keys = {p.key for p in problems_of("")}
    assert keys == {"site", "ingress", "tunnels"}


def test_recursive_alias_is_a_validation_error():
    assert problems_of("site: &a [*a]\n")[0].key == "<yaml>"


# ------------------------------------------------------- reusable parsers

@pytest.mark.parametrize("text,seconds", [
    ("1s", 1.0), ("100ms", 0.1), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (" 250 ms ", 0.25),
    ("5", 5.0), (5, 5.0), (0.5, 0.5), (0, 0.0), (".5s", 0.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "fast", "1 sec", "-1s", -1, True, None, [1], "1e999s",
                                 float("inf"), float("nan"), "1s2"])
def test_parse_duration_refuses(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("text,pct", [("3%", 3.0), (3, 3.0), ("0.5 %", 0.5), ("100", 100.0),
                                      (0, 0.0)])
def test_parse_percent(text, pct):
    assert parse_percent(text) == pct


@pytest.mark.parametrize("bad", ["101%", -1, "x%", False, None, "3%%", float("nan")])
def test_parse_percent_refuses(bad):
    with pytest.raises(ValueError, match="percentage"):
        parse_percent(bad)


def test_valid_ifname():
    assert valid_ifname("eth0") and valid_ifname("a" * 15) and valid_ifname("xfrm-1.2")
    assert not any(valid_ifname(n) for n in ["", "a" * 16, "a/b", "a b", "a:1", ".", "..", 3])


def test_format_duration_reads_naturally():
    assert [format_duration(s) for s in (0, 0.05, 1, 90, 120, 3600, 1.5)] == \
        ["0s", "50ms", "1s", "90s", "2m", "1h", "1.5s"]


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_durations_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_units(n, unit):
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert math.isclose(parse_duration(f"{n}{unit}"), n * scale, rel_tol=1e-12)


@given(st.floats(min_value=0, max_value=100))
def test_percent_round_trip(pct):
    assert parse_percent(f"{pct!r}%") == pct == parse_percent(pct)


# ---------------------------------------------------------- property tests

EXAMPLE_DATA = yaml.safe_load(EXAMPLE.read_text())

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                     st.floats(allow_nan=True), st.text(max_size=20),
                     st.sampled_from(["1s", "50ms", "10.0.0.0/8", "10.0.0.1/8", "eth1",
                                      "primary", "secondary", "wan1", "198.51.100.10",
                                      "::1", "[::1]:1", "0x0F000000", "3%", "bgp"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def _paths(data, prefix=()):
    """Every (container, key) location in the plain config."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


EXAMPLE_PATHS = list(_paths(EXAMPLE_DATA))


@st.composite
def mutated_configs(draw):
    data = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent = data
        try:
            for k in path[:-1]:
                parent = parent[k]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(_values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=10))] = draw(_values)
            elif isinstance(parent, list):
                parent.append(draw(_values))
        except (KeyError, IndexError, TypeError):
            pass   # an earlier mutation removed or replaced this path
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _parses_or_validation_error(text: str) -> None:
    try:
        parse_config(text, "m.yaml")
    except ValidationError as exc:
        # YAML also breaks lines at \r, NEL and the Unicode separators.
        nlines = sum(text.count(c) for c in "\n\r\x85\u2028\u2029") + 1
        for p in exc.problems:
            assert isinstance(p, Problem) and p.file == "m.yaml" and p.key and p.expected
            assert 1 <= p.line <= nlines, p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_config_parses_or_raises_validation_error(text):
    _parses_or_validation_error(text)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mangled_text_parses_or_raises_validation_error(data):
    text = EXAMPLE.read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 20))
        text = text[:pos] + data.draw(st.text(max_size=5)) + text[pos + cut:]
    _parses_or_validation_error(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["primary", "secondary"]), min_size=1, max_size=8))
def test_role_counts(roles):
    items = [tunnel(f"t{i}", role, f"wan{i}", f"if{i}", f"192.0.2.{i + 1}")
             for i, role in enumerate(roles)]
    ok = "primary" in roles and roles.count("primary") <= 3 and roles.count("secondary") <= 3
    if ok:
        assert [t.ha_role for t in parse_config(cfg(*items)).tunnels] == roles
    else:
        assert problems_of(cfg(*items))
