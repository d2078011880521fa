"""Issue 15 on real XFRM interfaces (inside the VM): packet duplication.

A rule `wan: [wan1, wan2]`, `duplicate: true` sends each packet of its class
through ipsec1 and a copy through ipsec2: the copy is cloned on ipsec1's tc
egress before encryption and redirected to ipsec2, which encrypts it with its
own SA (if_id 2). At the site both arrive, decrypted, on their own XFRM
interfaces; a class pinned to wan1 without duplication arrives on ipsec1 only,
and ipsec2's ESP SA counters grow by the copies alone.
"""
from __future__ import annotations

import time

import pytest

import vmlab
from conftest import running_steerd
from measure import measured
from steerd.cli import request
from steerd.lab.seqflow import collect, send_flows, start_receiver

VOICE, PLAIN = "10.20.5.1", "10.20.6.1"
PORT = 5104
RULES = """rules:
  - name: voice
    match: {dst: 10.20.5.0/24, proto: udp}
    wan: [wan1, wan2]
    duplicate: true
  - name: plain
    match: {dst: 10.20.6.0/24, proto: udp}
    wan: wan1
"""


@pytest.fixture(scope="module")
def steerd(vm_lab):
    with running_steerd(vm_lab, vm_lab.steerd_config(), "quality steerd start") as proc:
        yield proc


def _esp_out(vm_lab, lk: vmlab.Link) -> int:
    """Packets the pop encrypted on *lk*'s outbound SA (pop -> site)."""
    return sum(pk for (src, dst, i), (_, pk) in vmlab.sa_counters(vm_lab.places["pop"]).items()
               if i == lk.if_id and src == lk.pop_wan and dst == lk.site_wan)


def test_duplicated_class_arrives_over_both_xfrm_tunnels(vm_lab, steerd):
    primaries = {lk.name for lk in vmlab.LINKS if lk.role == "primary"}
    deadline = time.monotonic() + 60
    while {t["name"] for t in steerd.status()["tunnels"] if t["state"] == "up"} < primaries:
        assert time.monotonic() < deadline, f"primaries not up: {steerd.status()['tunnels']}"
        time.sleep(0.5)
    reply = request(vm_lab.socket, {"cmd": "rules_apply", "text": RULES, "path": "vm-dup.yaml"})
    assert reply["ok"], reply
    try:
        deadline = time.monotonic() + 60
        while True:
            voice = {r["name"]: r for r in request(vm_lab.socket, {"cmd": "rules_list"})["rules"]}["voice"]
            if voice.get("copy") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert voice["now"] == vmlab.link("ipsec1").name and voice["copy"] == vmlab.link("ipsec2").name, voice
        esp_before = _esp_out(vm_lab, vmlab.link("ipsec2"))
        rx = start_receiver(vm_lab, PORT)
        sent = send_flows(vm_lab, [VOICE, PLAIN], PORT, pps=50, duration=4.0)
        got = collect(rx)
        esp_copies = _esp_out(vm_lab, vmlab.link("ipsec2")) - esp_before
    finally:
        request(vm_lab.socket, {"cmd": "rules_apply", "text": "rules: []\n", "path": "vm-dup.yaml"})
    voice, plain = got.get(0, {}), got.get(1, {})
    measured("duplication over XFRM (50 pkt/s, 4 s)",
             f"voice {voice.get('unique')}/{sent[0]} unique, per tunnel {voice.get('packets')}; "
             f"plain {plain.get('unique')}/{sent[1]}, per tunnel {plain.get('packets')}; "
             f"ESP packets out on ipsec2's SA during the run: {esp_copies}")
    p1, p2 = vmlab.link("ipsec1").xfrm, vmlab.link("ipsec2").xfrm
    # emulation may lose a packet or two in the guest: every packet once, nearly all twice
    assert voice["unique"] >= sent[0] * 0.99
    assert set(voice["packets"]) == {p1, p2} and voice["packets"][p2] >= sent[0] * 0.99
    assert set(plain["packets"]) == {p1}                       # the other class: no copy
    # ipsec2's SA carried the copies (and its probes: a few per second)
    assert sent[0] * 0.99 <= esp_copies <= sent[0] + 40
