"""Issue 14: the rules apply path (file to active) does each step once and off
the event loop. The daemon runs on the fake data path."""
from __future__ import annotations

from steerd import daemon as daemon_mod
from steerd.daemon import Daemon
from steerd.rules import parse
from steerd.testing.fake_dataplane import FakeDataplane

from test_reliability import base_config, rules_text, write


def test_start_reads_the_rules_file_once(tmp_path, monkeypatch):
    """steerd's main checks the rules before it touches the kernel, and the daemon
    installs those same rules: one read of the file (10,000 rules: ~0.4 s each)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text(50))
    path = write(tmp_path, base_config(tmp_path, rules_file=str(rules)))
    reads: list[str] = []
    real = parse.read_text      # every path to a rules file reads it through here
    monkeypatch.setattr(parse, "read_text", lambda p, what: reads.append(p) or real(p, what))
    started: list[Daemon] = []

    async def start_only(self: Daemon) -> None:
        self.dp.start(self._rules_before_attach)
        started.append(self)

    monkeypatch.setattr(daemon_mod, "KernelDataplane", FakeDataplane)
    monkeypatch.setattr(Daemon, "run", start_only)
    daemon_mod.main(["--config", path, "--no-probe"])
    assert reads == [str(rules)]
    d = started[0]
    assert [r.name for r in d.ruleset.rules] == [f"r{i}" for i in range(50)]
    assert d.rulemaps.compiled.nrules == 50
