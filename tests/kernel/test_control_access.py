"""Who may use the control socket: root does everything; a member of the
config's control_group reads (status, events) but cannot change anything
(rules apply, reload); any other user cannot connect. Real users, real
SO_PEERCRED; the daemon runs on the fake data path (no namespaces needed)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from steerd.config import parse_config
from steerd.daemon import Daemon
from steerd.dataplane import Layout
from steerd.testing.fake_dataplane import FakeDataplane
from steerd.lab.topology import Lab

pytestmark = pytest.mark.kernel
STEERCTL = str(Path(sys.executable).with_name("steerctl"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def accounts():
    """A control group with one member, and one user outside it; removed after."""
    tag = uuid.uuid4().hex[:6]
    group, member, outsider = f"stg{tag}", f"stm{tag}", f"sto{tag}"
    subprocess.run(["groupadd", "--system", group], check=True)
    for user, extra in ((member, ["-G", group]), (outsider, [])):
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        *extra, user], check=True)
    yield group, member, outsider
    for user in (member, outsider):
        subprocess.run(["userdel", user], check=False)
    subprocess.run(["groupdel", group], check=False)


@pytest.fixture
def daemon(accounts):
    run_dir = Path(tempfile.mkdtemp(prefix="steerd-ctl-", dir="/run"))
    run_dir.chmod(0o755)
    sock = run_dir / "steerd.sock"
    raw = Lab("a").config(control_socket=str(sock), control_group=accounts[0],
                          metrics={"listen": f"127.0.0.1:{_free_port()}"})
    cfg_path = run_dir / "steerd.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = parse_config(cfg_path.read_text(), str(cfg_path))
    d = Daemon(cfg, FakeDataplane(Layout.from_config(cfg)), probing=False)
    d._install_signals = lambda loop: None    # not the main thread
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_until_complete, args=(d.run(),), daemon=True)
    t.start()
    for _ in range(250):
        if sock.exists() and d.controller is not None:
            break
        threading.Event().wait(0.02)
    yield sock, cfg_path
    loop.call_soon_threadsafe(d.stop_event.set)
    t.join(5)
    shutil.rmtree(run_dir, ignore_errors=True)


def steerctl(user: str | None, *args: str) -> subprocess.CompletedProcess:
    """steerctl as *user* (None: root). The user keeps CAP_DAC_READ_SEARCH only,
    so it can run this checkout's venv wherever it lies (CI may clone under a
    0700 /root); connecting to the socket needs write access, which that
    capability does not give, so the socket's own mode and group still decide."""
    who = [] if user is None else [
        "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return subprocess.run([*who, STEERCTL, *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})


def test_group_member_reads_but_cannot_change_and_others_cannot_connect(daemon, accounts):
    sock, cfg_path = daemon
    group, member, outsider = accounts
    st = os.stat(sock)
    assert oct(st.st_mode & 0o777) == "0o660" and st.st_uid == 0
    rules = sock.parent / "rules.yaml"
    rules.write_text("rules: []\n")
    rules.chmod(0o644)

    as_member = steerctl(member, "--socket", str(sock), "status", "--json")
    assert as_member.returncode == 0, as_member.stderr
    assert {t["name"] for t in json.loads(as_member.stdout)["tunnels"]} >= {"pri-wan1"}
    events = steerctl(member, "--socket", str(sock), "events", "--json")
    assert events.returncode == 0, events.stderr

    refused = steerctl(member, "--socket", str(sock), "rules", "apply", "-f", str(rules))
    assert refused.returncode != 0 and "rules_apply needs root" in refused.stderr, refused
    refused = steerctl(member, "--socket", str(sock), "reload")
    assert refused.returncode != 0 and "reload needs root" in refused.stderr, refused

    outside = steerctl(outsider, "--socket", str(sock), "status")
    assert outside.returncode != 0 and "no access to" in outside.stderr, outside

    as_root = steerctl(None, "--socket", str(sock), "rules", "apply", "--dry-run", "-f", str(rules))
    assert as_root.returncode == 0, as_root.stderr
