"""Fixtures of the real-kernel lab (tests/vm): run inside the VM that
scripts/vm-run.sh boots (`make test-vm`). Inside that VM (STEERD_VM=1, set by
tests/vm/guest.sh) the guest is ours: a missing kernel module or tool fails every
test naming it, and any skip is a failure. Elsewhere (`pytest tests/vm` on a
kernel without XFRM interfaces, ESP or netem) every test skips with the reason.

One lab per session (building it and bringing six IKEv2 tunnels up costs tens
of seconds under emulation) and one steerd per module (bcc compiles its
classifier in ~10 s there); tests restore what they impair.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time

import pytest

import vmlab
from measure import MEASURED, measured
from steerd.lab.runner import SteerdProcess


def pytest_configure(config):
    config.addinivalue_line("markers", "vm: real-kernel lab (XFRM interfaces, ESP, netem, strongSwan); "
                                       "runs inside the VM booted by `make test-vm`")


def pytest_collection_modifyitems(items):
    for item in items:
        if f"tests{os.sep}vm" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


_SUPPORT: tuple[bool, str] | None = None
IN_VM = os.environ.get("STEERD_VM") == "1"


def lab_supported() -> tuple[bool, str]:
    global _SUPPORT
    if _SUPPORT is None:
        _SUPPORT = vmlab.xfrm_supported()
    return _SUPPORT


@pytest.fixture(scope="session")
def vm_lab():
    ok, why = lab_supported()
    if not ok and IN_VM:
        pytest.fail(f"the VM guest cannot run the lab: {why}", pytrace=False)
    if not ok:
        pytest.skip(f"real-kernel lab unavailable here ({why}); `make test-vm` runs it in a VM")
    lab = vmlab.VmLab()
    t0 = time.monotonic()
    try:
        lab.up()
    except BaseException:
        print(lab.logs())
        lab.down()
        raise
    measured("lab setup", f"{time.monotonic() - t0:.1f} s (namespaces+links+netem "
             f"{lab.timings.get('namespaces', 0):.1f} s, two charons {lab.timings.get('charon_start', 0):.1f} s, "
             f"six IKEv2 tunnels up {lab.timings.get('tunnels_up', 0):.1f} s)")
    yield lab
    dest = os.environ.get("VM_LOG_DIR")
    if dest:
        lab.copy_logs(os.path.join("/run/steerd-vm-logs", "lab"))
    lab.down()


@pytest.fixture(autouse=True)
def _lab_logs_on_failure(request):
    """On a failing test print the charons' logs (the guest's files die with it)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and "vm_lab" in request.fixturenames:
        lab = request.getfixturevalue("vm_lab")
        print(lab.logs())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if IN_VM and rep.skipped:
        # in our own guest nothing may be skipped: a skip would hide a missing feature
        why = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else getattr(rep, "wasxfail", rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped inside the VM lab, where a skip is a failure: {why}"
    setattr(item, f"rep_{rep.when}", rep)


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("real-kernel lab: measured")
        for name, text in MEASURED.items():
            terminalreporter.write_line(f"{name}: {text}")


def copy_to_log_dir(path: str, name: str) -> None:
    if os.environ.get("VM_LOG_DIR") and os.path.exists(path):
        os.makedirs("/run/steerd-vm-logs", exist_ok=True)
        shutil.copy(path, os.path.join("/run/steerd-vm-logs", name))


class VmSteerd(SteerdProcess):
    """steerd as the namespace lab starts it, with a start timeout for emulation
    (imports and the bcc compile take tens of seconds under qemu TCG)."""

    def _wait_ready(self, timeout: float = 300.0) -> None:
        super()._wait_ready(timeout)


_START_FAILED: dict[str, str] = {}


@contextlib.contextmanager
def running_steerd(lab, cfg: dict, label: str, config_name: str = "steerd.yaml", *args: str):
    """One steerd on *cfg* in the pop, for a test module (its fixture yields
    from here): stopped, its log tail printed and the kernel cleaned up after.
    A start that failed once fails every later test of the module at once
    (pytest retries a failed module fixture for each test)."""
    if label in _START_FAILED:
        pytest.fail(f"steerd did not start (see the first test's error): {_START_FAILED[label]}",
                    pytrace=False)
    t0 = time.monotonic()
    path = lab.write_config(cfg, config_name)
    try:
        proc = VmSteerd(lab, path, args)
    except Exception as exc:
        _START_FAILED[label] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        kills = [ln for ln in vmlab.sh("dmesg", check=False).splitlines() if "Killed process" in ln]
        if kills:   # e.g. the bcc compile ran the guest out of memory (VM_MEM)
            print("guest kernel:", *kills[-3:], sep="\n  ")
        raise
    measured(f"{label} (bcc compile + attach, emulated)", f"{time.monotonic() - t0:.1f} s")
    yield proc
    code = proc.stop()
    print(proc.tail(30))
    proc.cleanup()
    assert code in (0, -15), f"steerd exited with {code}"
