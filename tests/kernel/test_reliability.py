"""Issue 11, "what must be shown": a blackholed tunnel goes down within the usual
failover time while the daemon is under the pressures that used to stop it:
(a) its events file is on a full filesystem, (b) a non-root member of the
control group holds as many control connections as it can, (c) a reload of a
10,000-rule file is running. Real daemon, real probes, real packets dropped in
the namespace lab, real users (tests/kernel/test_control_access.py's fixture)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from steerd.cli import request
from steerd.lab.impair import set_drop

from test_control_access import accounts  # noqa: F401  (fixture: real users)

pytestmark = pytest.mark.kernel
DOWN_WITHIN = 2.0   # the 1.5 s failover budget + status polling, as test_failover
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


def down_after_blackhole(steerd, lab, name: str = "pri-wan2") -> float:
    set_drop(lab, name, blackhole=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        st = request(lab.socket, {"cmd": "status"})["status"]
        if next(t for t in st["tunnels"] if t["name"] == name)["state"] == "down":
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{name} not down after 10 s:\n{steerd.tail()}")


@pytest.fixture
def full_fs():
    """A 256 KiB tmpfs filled to the last byte."""
    mnt = tempfile.mkdtemp(prefix="steerd-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], check=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/filler", "bs=4k"], capture_output=True)
    yield mnt
    subprocess.run(["umount", "-l", mnt], check=False)
    os.rmdir(mnt)


def test_down_in_time_with_the_events_file_on_a_full_filesystem(lab, start_steerd, full_fs):
    events = os.path.join(full_fs, "events.jsonl")
    steerd = start_steerd(lab.config(events={"file": events}))
    took = down_after_blackhole(steerd, lab)
    assert took < DOWN_WITHIN, f"down after {took:.2f}s"
    assert "not written" in steerd.tail(200)          # the failure is reported, not fatal
    st = request(lab.socket, {"cmd": "status"})["status"]
    assert st["active_ha_role"] == "primary" and steerd.proc.poll() is None


HOG = r"""
import json, select, socket, sys
held, refused = [], 0
for _ in range(400):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except OSError as exc:
        refused += 1
        continue
    if select.select([s], [], [], 0.1)[0]:       # answered at once: refused
        refused += 1
        s.close()
    else:
        held.append(s)
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
sys.stdin.read()                                  # hold them until the test is done
"""


def test_down_in_time_while_a_group_member_holds_all_the_connections_it_can(
        lab, start_steerd, accounts):  # noqa: F811
    group, member, _ = accounts
    os.chmod(lab.run_dir, 0o755)
    steerd = start_steerd(lab.config(control_group=group))
    hog = subprocess.Popen(["setpriv", f"--reuid={member}", f"--regid={member}", "--init-groups",
                            "/usr/bin/python3", "-c", HOG, lab.socket],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        got = json.loads(hog.stdout.readline())
        from steerd.control import MAX_CLIENTS_PER_USER
        assert got["held"] == MAX_CLIENTS_PER_USER and got["refused"] > 0, got
        took = down_after_blackhole(steerd, lab)
        assert took < DOWN_WITHIN, f"down after {took:.2f}s"
        assert request(lab.socket, {"cmd": "status"})["ok"]      # root still gets in
    finally:
        hog.stdin.close()
        hog.wait(10)


def test_down_in_time_while_a_reload_of_10000_rules_runs(lab, start_steerd):
    from rulegen import rules_yaml
    path = os.path.join(lab.run_dir, "rules.yaml")
    with open(path, "w") as f:
        f.write(rules_yaml(10000))
    steerd = start_steerd(lab.config(rules_file=path))
    replies = []

    def reloads():
        for _ in range(3):      # back to back: one is always running
            replies.append(request(lab.socket, {"cmd": "reload"}))
    t = threading.Thread(target=reloads)
    t.start()
    time.sleep(0.3)
    took = down_after_blackhole(steerd, lab)
    t.join(60)
    assert took < DOWN_WITHIN, f"down after {took:.2f}s"
    assert len(replies) == 3 and all(r["ok"] for r in replies), replies
    st = request(lab.socket, {"cmd": "status"})["status"]
    assert st["rules"] == 10000


def test_cleanup_removes_what_a_reload_added_after_the_config_is_edited_back(lab):
    """Issue 11 item 12: start with 5 tunnels, reload to 6 (a 6th table and ip
    rule), edit the file back to 5 without reloading, stop: `steerd --cleanup`
    removes all 6 (the union of what was installed), and the kernel is as before."""
    from test_restart import kernel_state
    from steerd.lab.runner import SteerdProcess
    before = kernel_state(lab)
    five = lab.config(tunnels=lab.config()["tunnels"][:5])
    path = lab.write_config(five)
    p = SteerdProcess(lab, path, ("--no-probe",))
    lab.write_config(lab.config())
    assert request(lab.socket, {"cmd": "reload"})["ok"]
    assert len(request(lab.socket, {"cmd": "status"})["status"]["tunnels"]) == 6
    lab.write_config(five)                    # edited back, never reloaded
    p.stop()
    p.cleanup()
    after = kernel_state(lab)
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}


BIG_STATUS = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"cmd": "status", "pad": "x" * int(sys.argv[2])}).encode() + b"\n")
s.shutdown(socket.SHUT_WR)
print(s.makefile("rb").readline().decode(), end="")
"""


def test_group_members_requests_are_small_roots_are_not(lab, start_steerd, accounts):  # noqa: F811
    """Issue 11 item 2: a member cannot make the daemon buffer MiBs per connection."""
    group, member, _ = accounts
    os.chmod(lab.run_dir, 0o755)
    start_steerd(lab.config(control_group=group))

    def status_as(user, pad: int) -> dict:
        who = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}",
                                       "--init-groups"]
        out = subprocess.run([*who, "/usr/bin/python3", "-c", BIG_STATUS, lab.socket, str(pad)],
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout)
    assert status_as(member, 1000)["ok"]
    refused = status_as(member, 100_000)
    assert not refused["ok"] and "larger than 16384" in refused["error"]
    assert status_as(None, 100_000)["ok"]          # root may send a rules file's worth
