"""Fixtures for kernel tests: a fresh namespace lab per test, steerd inside it,
and cleanup that runs even when a test fails."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from steerd.lab.runner import Receiver, SteerdProcess
from steerd.lab.topology import Lab


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    lab = Lab(f"sdt{uuid.uuid4().hex[:5]}").up()
    yield lab
    lab.down()


@pytest.fixture
def netns():
    """An empty network namespace (sdt<random>), deleted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    ns = f"sdt{uuid.uuid4().hex[:5]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def start_steerd(lab):
    """start_steerd(cfg_dict=None, *args) -> SteerdProcess; stopped and cleaned up after the test."""
    procs: list[SteerdProcess] = []

    def start(cfg: dict | None = None, *args: str) -> SteerdProcess:
        path = lab.write_config(cfg or lab.config())
        p = SteerdProcess(lab, path, args)
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.stop()
    if procs:
        procs[-1].cleanup()


@pytest.fixture
def receiver(lab):
    rx = Receiver(lab)
    yield rx
    if rx.proc.poll() is None:
        rx.proc.kill()
