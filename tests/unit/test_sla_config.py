"""sla_classes in the site config: parsed into SlaLimits; every bad value refused at
its line and key with what was expected (the config.py error style)."""
from __future__ import annotations

import pytest

from steerd.config import parse_config
from steerd.sla import LEAVE_HOLD, RESTORE_HOLD, SlaLimits
from steerd.yamlsrc import ValidationError

BASE = """site: b1
ingress: [eth1]
tunnels:
  - {name: t1, ha_role: primary, wan: wan1, interface: ipsec1, public_ip: 198.51.100.1,
     probe_target: 169.254.1.2, bandwidth: {down_mbps: 100}}
"""


def problems(text: str):
    with pytest.raises(ValidationError) as exc:
        parse_config(text, "site.yaml")
    return exc.value.problems


def marked(text: str) -> int:
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if "#!" in t]
    return line


def test_classes_parse_with_defaults():
    c = parse_config(BASE + """sla_classes:
  realtime: {max_loss_pct: 1, max_latency_ms: 150, max_jitter_ms: 30}
  voice-mos: {min_mos: 3.6, codec: g729, leave_hold: 1s, restore_hold: 2m}
""", "site.yaml")
    assert c.sla_classes == {
        "realtime": SlaLimits(max_loss_pct=1.0, max_latency_ms=150.0, max_jitter_ms=30.0),
        "voice-mos": SlaLimits(min_mos=3.6, codec="g729", leave_hold=1.0, restore_hold=120.0)}
    rt = c.sla_classes["realtime"]
    assert (rt.codec, rt.leave_hold, rt.restore_hold) == ("g711", LEAVE_HOLD, RESTORE_HOLD)
    assert parse_config(BASE, "site.yaml").sla_classes == {}
    assert parse_config(BASE + "sla_classes:\n", "site.yaml").sla_classes == {}


BAD = [
    ("not-a-mapping", "sla_classes: [realtime]  #!\n", "sla_classes", "mapping of class name"),
    ("no-limit", "sla_classes:\n  realtime: {codec: g711}  #!\n", "sla_classes.realtime",
     "at least one limit"),
    ("limits-scalar", "sla_classes:\n  realtime: fast  #!\n", "sla_classes.realtime", "mapping"),
    ("unknown-key", "sla_classes:\n  realtime:\n    max_latency: 150  #!\n",
     "sla_classes.realtime.max_latency", "did you mean 'max_latency_ms'"),
    ("loss-over-100", "sla_classes:\n  rt:\n    max_loss_pct: 120  #!\n",
     "sla_classes.rt.max_loss_pct", "0 to 100"),
    ("latency-negative", "sla_classes:\n  rt:\n    max_latency_ms: -5  #!\n",
     "sla_classes.rt.max_latency_ms", "milliseconds"),
    ("jitter-text", "sla_classes:\n  rt:\n    max_jitter_ms: low  #!\n",
     "sla_classes.rt.max_jitter_ms", "milliseconds"),
    ("mos-over-4.5", "sla_classes:\n  rt:\n    min_mos: 5  #!\n", "sla_classes.rt.min_mos",
     "<= 4.5"),
    ("mos-under-1", "sla_classes:\n  rt:\n    min_mos: 0.5  #!\n", "sla_classes.rt.min_mos",
     ">= 1"),
    ("codec", "sla_classes:\n  rt:\n    min_mos: 4\n    codec: opus  #!\n", "sla_classes.rt.codec",
     "g711"),
    ("leave-hold", "sla_classes:\n  rt:\n    max_loss_pct: 1\n    leave_hold: soon  #!\n",
     "sla_classes.rt.leave_hold", "duration"),
    ("restore-hold-too-long", "sla_classes:\n  rt:\n    max_loss_pct: 1\n    restore_hold: 2d  #!\n",
     "sla_classes.rt.restore_hold", "duration"),
    ("class-name", "sla_classes:\n  real time:  #!\n    max_loss_pct: 1\n",
     "sla_classes.real time", "class name"),
]


@pytest.mark.parametrize("snippet,key,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_class_is_refused_at_its_line(snippet, key, fragment):
    text = BASE + snippet
    got = problems(text)
    hits = [p for p in got if p.key == key and p.line == marked(text)]
    assert hits, "\n".join(map(str, got))
    assert all(p.file == "site.yaml" for p in got)
    assert any(fragment in p.expected for p in hits), [p.expected for p in hits]
    assert str(hits[0]).startswith(f"site.yaml:{marked(text)}: {key}: got ")


def test_hooks_can_run_on_sla_events():
    c = parse_config(BASE + "hooks:\n  - {on: [sla_violation, sla_restored], run: /bin/true}\n",
                     "site.yaml")
    assert c.hooks[0].on == frozenset({"sla_violation", "sla_restored"})
