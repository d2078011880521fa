"""Issue 4 through the daemon: rule-pinned flows leave only through their WAN
role's tunnel while the rest keeps spreading; `steerctl rules apply` is all or
nothing; hits are counted; a pinned tunnel down applies the fallback."""
from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from steerd.cli import main as steerctl
from steerd.lab.impair import set_drop
from steerd.lab.runner import send, split

pytestmark = pytest.mark.kernel

RULES = """rules:
  - name: voice
    match:
      dst: 10.20.5.0/24
      proto: udp
      dst_port: [5001]
    wan: wan3
    fallback: wan2
  - name: bulk
    match:
      dst: 10.20.6.0/24
    wan: wan2
    fallback: drop
"""


def ctl(lab, *args: str):
    return CliRunner().invoke(steerctl, ["--socket", lab.socket, *args])


def write(lab, name: str, text: str) -> str:
    path = os.path.join(lab.run_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def test_rules_pin_flows_and_the_rest_spreads(lab, start_steerd, receiver):
    start_steerd()
    res = ctl(lab, "rules", "apply", "-f", write(lab, "rules.yaml", RULES))
    assert res.exit_code == 0, res.output
    assert "+ voice" in res.output or "added" in res.output
    send(lab, 200, dst="10.20.5.0/24", duration=1.0, first_flow=0)
    send(lab, 200, dst="10.20.6.0/24", duration=1.0, first_flow=1000)
    send(lab, 600, dst="10.20.128.0/17", duration=1.0, first_flow=2000)
    time.sleep(0.5)
    per_flow = receiver.snapshot()
    voice = split({f: v for f, v in per_flow.items() if f < 1000})
    bulk = split({f: v for f, v in per_flow.items() if 1000 <= f < 2000})
    rest = split({f: v for f, v in per_flow.items() if f >= 2000})
    assert voice == {"gw-p3": 200} and bulk == {"gw-p2": 200}
    assert set(rest) == {"gw-p1", "gw-p2", "gw-p3"}
    listed = json.loads(ctl(lab, "rules", "list", "--json").output)
    hits = {r["name"]: r["hits"] for r in listed}
    assert hits["voice"] >= 200 and hits["bulk"] >= 200

    # the pinned tunnel dies: voice falls back to wan2, bulk (fallback drop) is dropped
    set_drop(lab, "pri-wan3", blackhole=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ctl(lab, "status", "--json").output.count('"down"') < 1:
        time.sleep(0.1)
    receiver.reset()
    send(lab, 100, dst="10.20.5.0/24", duration=1.0, first_flow=5000)
    time.sleep(0.5)
    assert split({f: v for f, v in receiver.snapshot().items() if f >= 5000}) == {"gw-p2": 100}


def test_bad_rules_file_changes_nothing(lab, start_steerd):
    start_steerd()
    assert ctl(lab, "rules", "apply", "-f", write(lab, "good.yaml", RULES)).exit_code == 0
    before = ctl(lab, "rules", "list", "--json").output
    bad = RULES.replace("wan: wan2\n    fallback: drop", "wan: wan7\n    fallback: drop")
    res = ctl(lab, "rules", "apply", "-f", write(lab, "bad.yaml", bad))
    assert res.exit_code == 2
    assert "bad.yaml:" in res.output and "wan" in res.output
    dry = ctl(lab, "rules", "apply", "--dry-run", "-f", write(lab, "one.yaml", RULES.split("  - name: bulk")[0]))
    assert dry.exit_code == 0 and "nothing changed" in dry.output
    after = json.loads(ctl(lab, "rules", "list", "--json").output)
    assert [r["name"] for r in after] == [r["name"] for r in json.loads(before)] == ["voice", "bulk"]


def test_rules_file_is_loaded_at_start(lab, start_steerd, receiver):
    path = write(lab, "rules.yaml", RULES)
    start_steerd(lab.config(rules_file=path))
    send(lab, 100, dst="10.20.5.0/24", duration=1.0)
    time.sleep(0.5)
    assert split(receiver.snapshot()) == {"gw-p3": 100}
