"""Issue 6: /metrics in the namespace lab has the DESIGN.md names, the lab's
labels, and values that follow the traffic (tx counters come from eBPF maps)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from steerd.lab.netns import ns_sh
from steerd.lab.runner import send

pytestmark = pytest.mark.kernel
# steerd_rule_matches_total{rule} has a sample per rule: checked where rules are applied
DESIGN_NAMES = ["steerd_tunnel_up", "steerd_tunnel_rtt_seconds", "steerd_tunnel_jitter_seconds",
                "steerd_tunnel_mos",
                "steerd_tunnel_loss_ratio", "steerd_tunnel_weight", "steerd_tunnel_tx_packets_total",
                "steerd_tunnel_tx_bytes_total", "steerd_ha_active_role",
                "steerd_rebalances_total", "steerd_link_state_changes_total",
                "steerd_config_load_errors_total"]


def scrape(lab) -> str:
    return ns_sh(lab.gw, sys.executable, "-c",
                 "import urllib.request;print(urllib.request.urlopen("
                 "'http://127.0.0.1:9469/metrics', timeout=5).read().decode())")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def tx(values, tunnel: str) -> float:
    key = [k for k in values if k[0] == "steerd_tunnel_tx_packets_total" and ("tunnel", tunnel) in k[1]]
    return values[key[0]]


def test_metrics_follow_the_lab(lab, start_steerd):
    start_steerd()
    time.sleep(2.5)  # a few probes
    text = scrape(lab)
    names = {k[0] for k in samples(text)}
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    for name in DESIGN_NAMES:
        base = name.removesuffix("_total")
        assert name in names or base in declared, name
    before = samples(text)
    labels = dict(next(k for k in before if k[0] == "steerd_tunnel_up"
                       and ("tunnel", "pri-wan2") in k[1])[1])
    site = f"{lab.prefix}-branch"
    assert labels == {"tunnel": "pri-wan2", "wan": "wan2", "ha_role": "primary", "site": site}
    assert before[("steerd_ha_active_role", (("role", "primary"), ("site", site)))] == 1
    sent = send(lab, 300, duration=1.0)
    time.sleep(1.5)  # counters are read from the maps once a second
    after = samples(scrape(lab))
    grew = sum(tx(after, t) - tx(before, t) for t in ("pri-wan1", "pri-wan2", "pri-wan3"))
    assert grew == sent
    assert tx(after, "sec-wan1") == 0
    rtt = [v for k, v in after.items() if k[0] == "steerd_tunnel_rtt_seconds"]
    assert len(rtt) == 6 and all(0 < v < 0.05 for v in rtt)


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian's prometheus) not installed")
def test_promtool_check_metrics_is_clean(lab, start_steerd):
    start_steerd()
    time.sleep(1.5)
    res = subprocess.run(["promtool", "check", "metrics"], input=scrape(lab), capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
