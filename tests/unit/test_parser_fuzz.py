"""Parser fuzz (issue #11): seeded mutations of the real example config and
rules files, checked through `steerctl config check` as a user runs it. Every
case exits 0 (still valid) or 2 with ``file:line:`` naming the mutated file;
never a traceback, never more than a bounded time or memory per case.

Deterministic (seeded): a failure names its seed and the case reproduces with
``fuzz_case(seed)``. The mutations are what tripped the parsers before: bytes
that are not UTF-8, huge integers, tags, complex keys, anchors and aliases
(bombs included), merge keys, deep nesting, YAML indicators, tabs, line breaks
other than "\\n", and random cuts and splices of the file's own text.
"""
from __future__ import annotations

import random
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from steerd.cli import main as steerctl

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (ROOT / "deploy" / "steerd.example.yaml").read_bytes()
RULES = (ROOT / "deploy" / "rules.example.yaml").read_bytes()
CASES = 240
MAX_CPU_S = 2.0          # per case; the example files take ~10 ms
MAX_PEAK = 64 << 20      # bytes allocated at the peak of one case

TOKENS = [b"&a ", b"*a", b"*b", b"!!int ", b"!!int \"\"", b"!!str ", b"!!float ", b"!!binary ",
          b"!foo ", b"!!python/object:os.system ", b"? ", b"? [x]\n: ", b"<<: *a\n", b"<<: ",
          b"[", b"]", b"{", b"}", b"{}", b"[]", b",", b": ", b":", b"- ", b"-", b"\t", b"  ", b"\n",
          b"\r", b"\r\n", b"\xc2\x85", b"\xe2\x80\xa8", b"\xff", b"\xfe\xff", b"\xe7", b"\x00",
          b"'", b'"', b"\\", b"#", b"|", b">", b"%YAML 1.1\n", b"---\n", b"...\n", b"~", b"null",
          b"yes", b"0x", b"1:30", b".inf", b"9" * 4400, b"-" * 3, b"\xc2\xb2", b"\xef\xbb\xbf",
          b"[" * 80, b"{a: " * 40]


def bomb() -> bytes:
    out = [b"z0: &z0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        out.append(f"z{i}: &z{i} [".encode() + b", ".join([f"*z{i - 1}".encode()] * 9) + b"]")
    return b"\n".join(out) + b"\n"


def mutate(data: bytes, rnd: random.Random) -> bytes:
    for _ in range(rnd.randint(1, 4)):
        pos = rnd.randint(0, len(data))
        op = rnd.random()
        if op < 0.5:
            data = data[:pos] + rnd.choice(TOKENS) + data[pos + rnd.randint(0, 3):]
        elif op < 0.7:                                  # splice a piece of the file elsewhere
            a = rnd.randint(0, len(data))
            piece = data[a:a + rnd.randint(1, 60)]
            data = data[:pos] + piece + data[pos:]
        elif op < 0.85:
            data = data[:pos] + data[pos + rnd.randint(1, 40):]
        elif op < 0.95:                                 # one byte, any value
            data = data[:pos] + bytes([rnd.randrange(256)]) + data[pos + 1:]
        else:
            data = data[:pos] + b"\n" + bomb() + data[pos:]
    return data


def fuzz_case(seed: int, tmp: Path) -> tuple[bytes, Path]:
    """Write the case's files; returns (what `config check` printed, the mutated file)."""
    rnd = random.Random(seed)
    rules_path, cfg_path = tmp / "rules.yaml", tmp / "steerd.yaml"
    config = CONFIG.replace(b"rules_file: /etc/steerd/rules.yaml", b"rules_file: " + bytes(rules_path))
    assert bytes(rules_path) in config
    if seed % 2:
        config, rules, target = mutate(config, rnd), RULES, cfg_path
    else:
        config, rules, target = config, mutate(RULES, rnd), rules_path
    rules_path.write_bytes(rules)
    cfg_path.write_bytes(config)
    return target


@pytest.mark.parametrize("block", range(8))
def test_fuzzed_files_exit_0_or_2_with_file_and_line(tmp_path, block):
    runner = CliRunner()
    per_block = CASES // 8
    for seed in range(block * per_block, (block + 1) * per_block):
        target = fuzz_case(seed, tmp_path)
        tracemalloc.start()
        t0 = time.process_time()
        try:
            res = runner.invoke(steerctl, ["config", "check", str(tmp_path / "steerd.yaml")])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        cpu = time.process_time() - t0
        where = f"seed {seed} (fuzz_case({seed}, path) rewrites the files)"
        assert res.exit_code in (0, 2), (where, res.exit_code, res.output, res.exception)
        assert res.exception is None or isinstance(res.exception, SystemExit), (where, res.exception)
        assert "Traceback" not in res.output, (where, res.output)
        if res.exit_code == 2:
            # a problem of the mutated file, or of the other one when the mutation
            # made the config name a missing rules file or drop a needed key
            lines = re.findall(rf"^({re.escape(str(tmp_path))}/[\w.]+):(\d+): ", res.output, re.M)
            assert lines, (where, res.output)
            if target.name == "rules.yaml" and "rules.yaml" in res.output:
                assert any(f == str(target) for f, _ in lines), (where, res.output)
        assert cpu < MAX_CPU_S, (where, cpu)
        assert peak < MAX_PEAK, (where, f"{peak / 2**20:.0f} MiB")


def test_the_fuzzer_reaches_the_paths_it_claims(tmp_path):
    """Enough cases are invalid, and of several kinds, for the test to mean something."""
    runner = CliRunner()
    kinds = set()
    for seed in range(0, CASES, 3):
        fuzz_case(seed, tmp_path)
        out = runner.invoke(steerctl, ["config", "check", str(tmp_path / "steerd.yaml")]).output
        kinds.update(k for k in ("UTF-8", "<yaml>", "aliases expanding", "rules[", "tunnels[")
                     if k in out)
    assert kinds >= {"UTF-8", "<yaml>", "rules[", "tunnels["}, kinds
