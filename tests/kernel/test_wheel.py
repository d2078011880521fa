"""What a new user gets: steerd's wheel, installed into a fresh venv, runs.

The wheel is built from a copy of this checkout's sources (the checkout stays
clean, and the copy is deleted before steerd starts, so nothing can fall back to
it), installed with pip into a new venv (--system-site-packages: bcc is Debian's
python3-bpfcc), and the venv's own `steerd` console script runs in the namespace
lab until its own `steerctl` reports a tunnel up.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from steerd.lab.runner import SteerdProcess

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
#: What a wheel is built from (what deploy/install.sh copies too).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "steerd", "ebpf")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with steerd installed from its wheel; returns the venv's bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    venv = tmp / "venv"
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)])
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check"]
    # the venv's setuptools (Debian's) builds it: no download for the build itself
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"),
         str(src)])
    [wheel] = (tmp / "dist").glob("steerd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert "steerd/ebpf/steer.c" in z.namelist()
    shutil.rmtree(src)
    # the dependencies the way a user gets them: resolved by pip
    run([*pip, "install", "--quiet", str(wheel)])
    return venv / "bin"


def test_installed_wheel_runs_steerd_and_a_tunnel_comes_up(lab, installed):
    where = run([str(installed / "python"), "-c",
                 "import steerd; from steerd.dataplane.sources import ebpf_dir;"
                 "print(steerd.__file__); print(ebpf_dir())"], cwd="/").stdout.split()
    venv = str(installed.parent) + "/"
    assert all(p.startswith(venv) for p in where), where   # not this checkout

    path = lab.write_config(lab.config())
    steerd = SteerdProcess(lab, path, command=(str(installed / "steerd"),))
    try:
        # `ip netns exec` execs: the process is the venv's interpreter running its script
        argv = Path(f"/proc/{steerd.proc.pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[0].startswith(venv) and argv[1] == str(installed / "steerd"), argv

        def tunnels() -> list[dict]:
            out = run([str(installed / "steerctl"), "--socket", lab.socket, "status", "--json"])
            return json.loads(out.stdout)["tunnels"]
        deadline = time.monotonic() + 20
        while not any(t["state"] == "up" for t in tunnels()) and time.monotonic() < deadline:
            time.sleep(0.2)
        up = [t["name"] for t in tunnels() if t["state"] == "up"]
        assert up, f"no tunnel up after 20 s:\n{steerd.tail()}"
    finally:
        assert steerd.stop() == 0, steerd.tail()
        steerd.cleanup()
