"""The verifier's cost of the daemon's classifier on this kernel (Debian 12's
6.1 in the VM lab): the README's 6.1 figure. tests/bench/verifier prints the
same for the host's kernel."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from measure import measured  # noqa: E402
from verifier import LIMIT, classifier_stats  # noqa: E402


def test_classifier_passes_the_verifier_within_half_its_limit():
    stats = classifier_stats()
    measured(f"verifier, kernel {os.uname().release}",
             ", ".join(f"{fn} {n:,} insns ({n / 1e6:.2f}M)" for fn, (n, _) in stats.items())
             + f" of the {LIMIT:,} limit")
    for fn, (n, summary) in stats.items():
        assert 0 < n <= LIMIT // 2, f"{fn}: {summary}"
