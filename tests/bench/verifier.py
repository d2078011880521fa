"""The verifier's cost of steerd's classifier as the daemon loads it
(ebpf/steer.c with the rule matcher, default map sizes): instructions
processed for `steer` (tc ingress) and `qos_classify` (a capped tunnel's
egress), against the kernel's limit of 1,000,000. Also what the rule-matcher
harness of tests/bench/rules costs, for comparison.

Shared with the VM lab (tests/vm/test_3_verifier.py), which prints the same
figures for Debian 12's 6.1 kernel.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "kernel")]

LIMIT = 1_000_000
FUNCS = ("steer", "qos_classify")


def processed(stats: str) -> int:
    """The 'processed N insns' figure of a verifier log (-1 when rejected)."""
    m = re.search(r"processed (\d+) insns", stats)
    return int(m.group(1)) if m and not stats.startswith("REJECTED") else -1


def classifier_stats() -> dict[str, tuple[int, str]]:
    """Load the daemon's classifier (its pins on a private bpffs, removed after)
    and return {function: (insns processed, verifier summary)}."""
    from rules_harness import verifier_stats

    from steerd.dataplane.program import Classifier, ProgramParams, remove_pins

    top = tempfile.mkdtemp(prefix="steerd-verifier-", dir="/run")
    subprocess.run(["mount", "-t", "bpf", "bpf", top], check=True)
    try:
        c = Classifier(ProgramParams(pin_dir=os.path.join(top, "steerd")))
        try:
            out = {}
            for fn in FUNCS:
                s = verifier_stats(c.bpf, fn)
                out[fn] = (processed(s), s.splitlines()[-1] if s else "")
            return out
        finally:
            c.close()
            remove_pins(c.params.pin_dir)
    finally:
        subprocess.run(["umount", top], check=False)
        os.rmdir(top)


def main() -> int:
    if os.geteuid() != 0:
        print("tests/bench/verifier: needs root (eBPF)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    from benchout import record, verdict
    from rules_harness import Harness, verifier_stats

    stats = classifier_stats()
    harness = processed(verifier_stats(Harness().bpf, "rules_harness"))
    kernel = os.uname().release
    print(f"verifier, kernel {kernel}: instructions processed (limit {LIMIT:,})")
    ok = True
    for fn, (n, summary) in stats.items():
        good = 0 < n <= LIMIT // 2
        ok &= good
        print(f"  {fn:<14} {n:>9,} insns = {n / 1e6:.2f}M   goal <= {LIMIT // 2:,} (half the limit): "
              f"{verdict(good)}   [{summary}]")
    print(f"  {'rules_harness':<14} {harness:>9,} insns   (tests/bench/rules' program: parser + matcher only)")
    record(kernel=kernel, insns={fn: n for fn, (n, _) in stats.items()}, harness_insns=harness)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
