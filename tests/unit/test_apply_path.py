"""Issue 14: the rules apply path (file to active) does each step once and off
the event loop. The daemon runs on the fake data path."""
from __future__ import annotations

import asyncio
import os
import sys

import pytest

from steerd import daemon as daemon_mod
from steerd import stager
from steerd.config import parse_config
from steerd.daemon import Daemon
from steerd.rules import Limits, parse, parse_rules
from steerd.testing.fake_dataplane import FakeDataplane

from test_reliability import base_config, rules_text, running, write


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
    assert d.rulemaps.installed.nrules == 50


def test_start_stages_a_big_rules_file_in_a_child(tmp_path, monkeypatch):
    """Over CHILD_MIN_BYTES (0 here) the start's rules are parsed and compiled by
    a child: the daemon's process never reads the file, yet installs its rules."""
    monkeypatch.setattr(stager, "CHILD_MIN_BYTES", 0)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text(50))
    path = write(tmp_path, base_config(tmp_path, rules_file=str(rules)))
    reads: list[str] = []
    real = parse.read_text
    monkeypatch.setattr(parse, "read_text", lambda p, what: reads.append(p) or real(p, what))
    started: list[Daemon] = []

    async def start_only(self: Daemon) -> None:
        self.dp.start(self._rules_before_attach)
        started.append(self)

    monkeypatch.setattr(daemon_mod, "KernelDataplane", FakeDataplane)
    monkeypatch.setattr(Daemon, "run", start_only)
    daemon_mod.main(["--config", path, "--no-probe"])
    assert reads == []
    d = started[0]
    assert [r.name for r in d.ruleset.rules] == [f"r{i}" for i in range(50)]
    assert d.rulemaps.installed.names == tuple(f"r{i}" for i in range(50))


def test_start_refuses_a_bad_rules_file_staged_in_a_child(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stager, "CHILD_MIN_BYTES", 0)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules_bad_wan(5))
    path = write(tmp_path, base_config(tmp_path, rules_file=str(rules)))
    monkeypatch.setattr(daemon_mod, "KernelDataplane", FakeDataplane)
    with pytest.raises(SystemExit) as exc:
        daemon_mod.main(["--config", path, "--no-probe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and f"{rules}:2" in err and "wan9" in err


def _rules_bad_wan(n: int) -> str:
    return rules_text(n).replace("wan: wan1}", "wan: wan9}", 1)


def test_apply_and_reload_through_the_child_all_or_nothing(tmp_path, monkeypatch):
    """Every request staged by a child process (threshold 0): applies, diffs
    against the running rules, a rejected file and a child that dies change
    nothing, a reload installs its rules file."""
    monkeypatch.setattr(stager, "CHILD_MIN_BYTES", 0)
    children: list[str] = []
    real = stager._in_child

    async def counted(req, timeout):
        children.append(req["op"])
        return await real(req, timeout)
    monkeypatch.setattr(stager, "_in_child", counted)

    raw = base_config(tmp_path)

    async def scenario():
        async with running(tmp_path, raw) as d:
            r = await d.rules_apply(rules_text(30), "a.yaml", dry_run=False)
            assert r["ok"] and r["diff"]["added"] == [f"r{i}" for i in range(30)]
            r = await d.rules_apply(rules_text(40), "b.yaml", dry_run=False)
            assert r["ok"] and r["diff"]["added"] == [f"r{i}" for i in range(30, 40)], r["diff"]
            assert not r["diff"]["changed"] and not r["diff"]["removed"]
            gen = d.rulemaps.generation
            assert len(d.ruleset.rules) == 40 and d.rulemaps.installed.nrules == 40

            r = await d.rules_apply(_rules_bad_wan(5), "c.yaml", dry_run=False)
            assert not r["ok"] and r["problems"][0]["line"] == 2, r
            assert "wan9" in r["text"] and "c.yaml" in r["text"]
            monkeypatch.setattr(stager, "CHILD", (sys.executable, "-c", "import sys; sys.exit(3)"))
            r = await d.rules_apply(rules_text(3), "d.yaml", dry_run=False)
            assert not r["ok"] and "nothing changed" in r["error"] and "exited with 3" in r["error"]
            assert len(d.ruleset.rules) == 40 and d.rulemaps.generation == gen
            assert d.ruleset.path == "b.yaml"

            monkeypatch.setattr(stager, "CHILD", (sys.executable, "-m", "steerd.stager"))
            (tmp_path / "rules.yaml").write_text(rules_text(7))
            write(tmp_path, dict(raw, rules_file=str(tmp_path / "rules.yaml")))
            r = await d.reload()
            assert r["ok"], r
            assert [x.name for x in d.ruleset.rules] == [f"r{i}" for i in range(7)]
            assert d.rulemaps.installed.names == tuple(f"r{i}" for i in range(7))
    asyncio.run(scenario())
    assert children == ["rules", "rules", "rules", "rules", "config"]


def test_the_child_stages_what_a_thread_stages(tmp_path):
    """Same request, same answer: the image, the rules and the diff text."""
    path = write(tmp_path, base_config(tmp_path))
    cfg = parse_config(open(path).read(), path)
    old = stager.pack_rules(parse_rules(rules_text(20), "old.yaml").rules)
    req = {"op": "rules", "text": rules_text(25), "path": "new.yaml", "cfg": cfg,
           "limits": Limits(), "old": old}
    ok, (staged, d) = stager._outcome(req)
    ok2, (staged2, d2) = asyncio.run(stager._in_child(req, 60))
    assert ok and ok2
    assert staged.image == staged2.image and staged.nrules == staged2.nrules == 25
    assert stager.unpack_now(staged.rules, "x") == stager.unpack_now(staged2.rules, "x")
    assert d == d2 and d.added == 5


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is *pid* (zombies included: they still have a /proc entry)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_a_hung_child_is_killed_and_steerctl_is_told(tmp_path, monkeypatch):
    """A staging child that never answers is killed and reaped at the timeout;
    apply and reload answer with a clear error (not a closed connection) and
    change nothing."""
    monkeypatch.setattr(stager, "CHILD_MIN_BYTES", 0)
    raw = base_config(tmp_path)

    async def scenario():
        async with running(tmp_path, raw) as d:
            r = await d.rules_apply(rules_text(5), "a.yaml", dry_run=False)
            assert r["ok"], r
            gen, before = d.rulemaps.generation, _children_of(os.getpid())
            real = stager._in_child
            monkeypatch.setattr(stager, "_in_child", lambda req, timeout: real(req, 0.5))
            monkeypatch.setattr(stager, "CHILD", (sys.executable, "-c",
                                                  "import time; time.sleep(60)"))
            r = await d.rules_apply(rules_text(9), "b.yaml", dry_run=False)
            assert not r["ok"], r
            assert "nothing changed" in r["error"] and "did not answer in 0.5 s" in r["error"]
            (tmp_path / "rules.yaml").write_text(rules_text(7))
            write(tmp_path, dict(raw, rules_file=str(tmp_path / "rules.yaml")))
            r = await d.reload()
            assert not r["ok"] and "did not answer in 0.5 s" in r["error"], r
            assert d.rulemaps.generation == gen and len(d.ruleset.rules) == 5
            assert d.ruleset.path == "a.yaml"
            assert _children_of(os.getpid()) == before
    asyncio.run(scenario())


def test_a_killed_child_is_named_as_killed(tmp_path, monkeypatch):
    """A child killed by a signal (the OOM killer's SIGKILL, say) is reported as
    such: its error is not in the daemon's log, there is none."""
    monkeypatch.setattr(stager, "CHILD", (sys.executable, "-c",
                                          "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    with pytest.raises(stager.StagingFailed, match="staging child killed by SIGKILL"):
        asyncio.run(stager._in_child({"op": "rules", "text": ""}, 60))


def test_the_child_runs_the_daemons_steerd_whatever_its_directory(tmp_path, monkeypatch):
    """`python -m` puts the working directory first on sys.path: a daemon started
    from a directory holding another steerd/ (an old checkout, or a file planted
    there) must not have that code staged, as root, in its child."""
    planted = tmp_path / "steerd"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "stager.py").write_text("raise SystemExit('planted steerd ran')\n")
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, base_config(tmp_path))
    cfg = parse_config(open(path).read(), path)
    req = {"op": "rules", "text": rules_text(3), "path": "r.yaml", "cfg": cfg,
           "limits": Limits(), "old": None}
    ok, (staged, _) = asyncio.run(stager._in_child(req, 60))
    assert ok and staged.nrules == 3
