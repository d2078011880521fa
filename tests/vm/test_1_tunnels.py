"""Issue 7 (a): six IKEv2 tunnels are up between pop and site, each on its own
XFRM interface (if_id), and traffic through each interface is carried by its ESP
SAs (their counters grow) and arrives on the site's interface of the same tunnel."""
from __future__ import annotations

import json
import os
import re
import sys

import yaml

import vmlab
from measure import measured

XFRM_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xfrm_tool.py")


def test_six_tunnels_established_with_fqdn_ids(vm_lab):
    sas = vm_lab.charons["pop"].swanctl("--list-sas")
    for lk in vm_lab.links:
        block = re.search(rf"^{lk.name}: #\d+, ESTABLISHED, IKEv2.*?(?=^\S|\Z)", sas, re.S | re.M)
        assert block, f"{lk.name}: no established IKE SA on the pop:\n{sas}"
        text = block.group(0)
        assert f"remote '{lk.site_id}' @ {lk.site_wan}" in text, text
        assert "local  'pop.steerd.test'" in text, text
        assert re.search(rf"{lk.name}: #\d+, reqid \d+, INSTALLED, TUNNEL", text), text
        # the CHILD_SA's SAs carry the tunnel's if_id
        assert f"(-|0x{lk.if_id:08x})" in text, text
    for side in ("pop", "site"):
        ids = vmlab.sa_if_ids(vm_lab.places[side])
        assert all(ids.get(lk.if_id, 0) == 2 for lk in vm_lab.links), f"{side}: SAs per if_id {ids}"
    measured("six IKEv2 tunnels up", f"{vm_lab.timings['tunnels_up']:.1f} s after the site initiated")


def test_traffic_through_each_xfrm_interface_uses_its_sas(vm_lab):
    pop, site = vm_lab.places["pop"], vm_lab.places["site"]
    before_pop, before_site = vmlab.sa_counters(pop), vmlab.sa_counters(site)
    rx_before = vm_lab.site_rx()
    for lk in vm_lab.links:
        out = vm_lab.ping(lk.name, count=5, interval=0.05)
        assert " 0% packet loss" in out, f"{lk.name}: {out}"
    after_pop, after_site = vmlab.sa_counters(pop), vmlab.sa_counters(site)
    rx_after = vm_lab.site_rx()
    for lk in vm_lab.links:
        for name, before, after, src in (("pop out", before_pop, after_pop, lk.pop_wan),
                                         ("site in", before_site, after_site, lk.pop_wan),
                                         ("site out", before_site, after_site, lk.site_wan),
                                         ("pop in", before_pop, after_pop, lk.site_wan)):
            keys = [k for k in after if k[0] == src and k[2] == lk.if_id]
            assert len(keys) == 1, f"{lk.name} {name}: SAs {sorted(after)}"
            b0, p0 = before.get(keys[0], (0, 0))
            b1, p1 = after[keys[0]]
            assert p1 - p0 >= 5 and b1 > b0, f"{lk.name} {name} SA counters {p0}->{p1} packets"
        # the echo requests arrived on the site's XFRM interface of this tunnel, only there
        assert rx_after[lk.name] - rx_before[lk.name] >= 5, (lk.name, rx_before, rx_after)


def test_pop_swanctl_conf_is_the_rendered_one(vm_lab):
    """The pop's charon runs what `steerctl ipsec render` produced from the steerd config."""
    conns = vm_lab.charons["pop"].swanctl("--list-conns")
    for lk in vm_lab.links:
        assert re.search(rf"^{lk.name}: IKEv2", conns, re.M), conns
    with open(vm_lab.charons["pop"].swanctl_conf, encoding="utf-8") as f:
        text = f.read()
    assert "rendered by `steerctl ipsec render`" in text
    assert text.count("if_id_in = ") == 12


def test_steerd_xfrm_reads_interfaces_sas_and_counters(vm_lab):
    """steerd.xfrm (netlink, no tools) sees what `ip xfrm` sees, in the pop namespace."""
    pop = vm_lab.places["pop"]
    vm_lab.ping("pri-wan3", count=3, interval=0.05)
    table = json.loads(pop.sh(sys.executable, XFRM_TOOL, "table"))
    text = vmlab.sa_counters(pop)
    assert table["interfaces"] == {lk.xfrm: lk.if_id for lk in vm_lab.links}
    got = {(s["src"], s["dst"], s["if_id"]): (s["bytes"], s["packets"]) for s in table["sas"]}
    assert set(got) == set(text)
    for key, (nbytes, npackets) in text.items():   # read a moment apart: never fewer
        assert got[key][1] <= npackets and got[key][1] >= npackets - 2, (key, got[key], npackets)
    c3 = table["counters"][str(3)]
    assert c3["tx_packets"] >= 3 and c3["rx_packets"] >= 3, c3


RENDER_VARIANTS = {
    "bidirectional, IPv4 id, explicit proposals": {
        "connection_mode": "bidirectional", "local_id": {"ipv4": "100.64.1.10"},
        "proposals": {"init": [{"encryption": "aes256", "integrity": "sha256", "prf": "sha256", "dh_group": 14},
                               {"encryption": "aes128", "integrity": "sha1", "dh_group": "modp3072"}],
                      "auth": {"encryption": "aes256gcm16", "dh_group": 19}},
        "dpd_delay": "0s",
    },
    "responder-only, email and key_id ids": {
        "local_id": {"email": "vpn@pop.steerd.test"},
        "tunnels": {lk.name: {"remote_id": {"key_id": f"site-{lk.name}"}} for lk in vmlab.LINKS},
        "local_ts": ["10.99.0.0/24"],
    },
}


def test_rendered_variants_load_into_charon(vm_lab, tmp_path):
    """Every mode, identity type and proposal form the renderer produces is accepted by a
    real charon (a scratch one in its own namespace, not the lab's)."""
    from steerd.config import parse_config
    from steerd.ipsec import render
    ns = "render-check"
    vmlab.sh("ip", "netns", "add", ns)
    charon = vmlab.Charon(vmlab.Place(ns), "render-check", str(tmp_path / "charon"))
    try:
        charon.write("")
        charon.start()
        for name, section in RENDER_VARIANTS.items():
            cfg = vm_lab.steerd_config()
            cfg["ipsec"] = {"secrets_file": vm_lab.secrets_path, **section}
            path = tmp_path / "steerd.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            site_cfg = parse_config(path.read_text(), str(path))
            conf = tmp_path / "swanctl.conf"
            conf.write_text(render(site_cfg.ipsec, site_cfg, vm_lab.secrets_path, show_secrets=True))
            out = charon.swanctl("--load-all", "--file", str(conf))
            assert out.count("loaded connection") == 6 and "failed" not in out, f"{name}:\n{out}"
            assert out.count("loaded ike secret") == 6, f"{name}:\n{out}"
            conns = charon.swanctl("--list-conns")
            for lk in vm_lab.links:
                assert re.search(rf"^{lk.name}: IKEv2", conns, re.M), f"{name}:\n{conns}"
    finally:
        charon.stop()
        vmlab.sh("ip", "netns", "del", ns, check=False)
