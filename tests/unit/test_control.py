"""Control socket and steerctl against a daemon on a fake data path (no root)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
import yaml
from click.testing import CliRunner

from steerd.cli import main as steerctl
from steerd.config import parse_config
from steerd.daemon import Daemon
from steerd.dataplane import Layout
from steerd.testing.fake_dataplane import FakeDataplane
from steerd.lab.topology import Lab

STATUS_KEYS = {"name", "ha_role", "wan", "interface", "state", "rtt_ms", "jitter_ms", "loss_pct",
               "weight", "share", "tx_packets", "tx_bytes"}


def _accepts(path: str) -> bool:
    """The socket listens (it exists from bind(), a moment before listen())."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path):
    yield from running_daemon(Lab("u").config(), tmp_path)


def running_daemon(raw: dict, tmp_path):
    """A daemon on the fake data path for config *raw* (a dict), with a control
    socket and metrics port of its own; stopped when the generator closes."""
    raw = dict(raw, control_socket=str(tmp_path / "s.sock"), state_dir=str(tmp_path / "state"),
               metrics={"listen": f"127.0.0.1:{_free_port()}"})
    path = tmp_path / "steerd.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = parse_config(path.read_text(), str(path))
    d = Daemon(cfg, FakeDataplane(Layout.from_config(cfg)), probing=False)
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(_run(d),), daemon=True)
    t.start()
    for _ in range(300):
        if d.controller is not None and _accepts(str(tmp_path / "s.sock")):
            break
        threading.Event().wait(0.02)
    yield d
    loop.call_soon_threadsafe(d.stop_event.set)
    t.join(5)


async def _run(d: Daemon) -> None:
    # signal handlers only work in the main thread: run without them
    d._install_signals = lambda loop: None
    await d.run()


def raw(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # the daemon refused early (oversized): its reply is still queued
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_status_json_matches_the_design_contract(daemon):
    res = CliRunner().invoke(steerctl, ["--socket", daemon.cfg.control_socket, "status", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["site"] == "u-branch" and st["active_ha_role"] == "primary"
    assert len(st["tunnels"]) == 6
    for t in st["tunnels"]:
        assert STATUS_KEYS <= set(t)
        assert t["state"] in ("up", "degraded", "down")
        assert 0.0 <= t["share"] <= 1.0
    assert abs(sum(t["share"] for t in st["tunnels"]) - 1.0) < 1e-3


def test_status_table_is_aligned_with_units(daemon):
    res = CliRunner().invoke(steerctl, ["--socket", daemon.cfg.control_socket, "status"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[1].startswith("TUNNEL")
    assert "57.1%" in res.output and "B" in res.output
    widths = {len(line) for line in lines[3:9]}
    assert len(lines[3:9]) == 6 and max(widths) - min(widths) <= 2


@pytest.mark.parametrize("payload", [b"garbage\n", b'{"cmd": "status"\n', b"[1,2]\n", b'{"cmd": 5}\n',
                                     b'{"cmd": "nope"}\n', b"\xff\xfe\n", b"", b"{}" * 10])
def test_bad_requests_get_an_error_and_the_daemon_lives(daemon, payload):
    out = raw(daemon.cfg.control_socket, payload)
    if out:
        assert json.loads(out)["ok"] is False
    assert json.loads(raw(daemon.cfg.control_socket, b'{"cmd":"status"}\n'))["ok"] is True


def test_oversized_request_is_refused(daemon):
    out = raw(daemon.cfg.control_socket, b'{"cmd": "status", "x": "' + b"a" * (5 << 20) + b'"}\n')
    assert json.loads(out) == {"ok": False, "error": "request larger than 4194304 bytes"}
    assert json.loads(raw(daemon.cfg.control_socket, b'{"cmd":"status"}\n'))["ok"] is True


def test_many_clients_at_once(daemon):
    results = []

    def client():
        results.append(json.loads(raw(daemon.cfg.control_socket, b'{"cmd":"status"}\n'))["ok"])
    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 50


def test_events_list_has_the_start(daemon):
    res = CliRunner().invoke(steerctl, ["--socket", daemon.cfg.control_socket, "events", "--json"])
    types = [json.loads(line)["type"] for line in res.output.splitlines()]
    assert "started" in types and "rebalance" in types


def test_unreachable_socket_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(steerctl, ["--socket", str(tmp_path / "none.sock"), "status"])
    assert res.exit_code == 1 and "cannot reach steerd" in res.output


def test_status_and_metrics_carry_each_tunnels_mos(daemon):
    from prometheus_client.core import Metric   # noqa: F401 (collector yields these)

    from steerd.config import HealthConfig, ProbeConfig
    from steerd.health import LinkMonitor, simulate
    from steerd.metrics import SteerdCollector
    from steerd.mos import mos

    # measured paths: 20 ms RTT clean on every tunnel, 250 ms on the first, 30 % loss on the second
    mons = []
    for i, t in enumerate(daemon.cfg.tunnels):
        mon = LinkMonitor(t.name, ProbeConfig(), HealthConfig(), 0.0)
        rtt = 0.25 if i == 0 else 0.02
        simulate(mon, lambda seq, sent, i=i, rtt=rtt: None if i == 1 and seq % 10 < 3 else rtt,
                 0.0, 20.0)
        mons.append(mon)
    daemon.monitors = mons
    res = CliRunner().invoke(steerctl, ["--socket", daemon.cfg.control_socket, "status", "--json"])
    rows = {t["name"]: t for t in json.loads(res.output)["tunnels"]}
    names = [t.name for t in daemon.cfg.tunnels]
    for name in names:
        t = rows[name]
        assert abs(t["mos"] - mos(t["rtt_ms"], t["jitter_ms"], t["loss_pct"])) <= 0.0051
    # 250 ms RTT: one-way 135 ms, still "best" for G.107; 30 % loss: barely "poor"
    assert rows[names[0]]["mos"] < rows[names[2]]["mos"] and rows[names[1]]["mos"] < 2.7
    table_out = CliRunner().invoke(steerctl, ["--socket", daemon.cfg.control_socket, "status"]).output
    assert " MOS " in table_out and f"{rows[names[2]]['mos']:.2f}" in table_out
    got = {s.labels["tunnel"]: s.value for fam in SteerdCollector(daemon).collect()
           if fam.name == "steerd_tunnel_mos" for s in fam.samples}
    assert set(got) == set(names)
    assert all(abs(got[n] - rows[n]["mos"]) < 0.006 for n in names)
