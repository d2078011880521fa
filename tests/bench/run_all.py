"""`make bench`: run every benchmark under tests/bench, then write the report.

Every executable file in tests/bench is a benchmark. Each one's output is shown
as it runs and kept in OUT/NAME.txt; its figures go to OUT/NAME.json (see
benchout.py). A bench fails when it exits non-zero, prints MISSED or MISS (a
goal not met) or prints no goal at all; `make bench` exits 1 if any failed, after
running all of them and writing docs/bench/report.{md,png} (report.py).

    .venv/bin/python tests/bench/run_all.py [--out DIR] [--only NAME,NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The rules bench can also run the throughput comparison; the throughput bench
# does that on its own here, so it is not run twice.
ARGS = {"rules": ["--throughput-seconds", "0"]}
MISSED = re.compile(r"\bMISS(ED)?\b")    # a goal not met, however a bench words it


@dataclass
class Outcome:
    name: str
    rc: int
    seconds: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def benches(only: set[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.iterdir() if p.is_file() and os.access(p, os.X_OK))
    return [p for p in found if only is None or p.name in only]


def run(bench: Path, out: Path) -> Outcome:
    txt, js = out / f"{bench.name}.txt", out / f"{bench.name}.json"
    js.unlink(missing_ok=True)
    env = dict(os.environ, STEERD_BENCH_JSON=str(js), PYTHONUNBUFFERED="1")
    print(f"\n===== tests/bench/{bench.name} {' '.join(ARGS.get(bench.name, []))}", flush=True)
    t0 = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen([str(bench), *ARGS.get(bench.name, [])], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1) as p:
        assert p.stdout is not None
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    txt.write_text("".join(lines), encoding="utf-8")
    text = "".join(lines)
    problems = []
    if p.returncode != 0:
        problems.append(f"exit status {p.returncode}")
    missed = [ln.strip() for ln in lines if MISSED.search(ln)]
    problems += [f"goal missed: {ln}" for ln in missed]
    if "goal" not in text.lower():
        problems.append("prints no goal")
    return Outcome(bench.name, p.returncode, time.monotonic() - t0, problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench-out"), help="raw outputs (default bench-out/)")
    ap.add_argument("--report", default=str(ROOT / "docs" / "bench"),
                    help="where report.md and report.png go (default docs/bench/)")
    ap.add_argument("--only", help="comma-separated bench names (default: all)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("make bench: needs root (namespaces, eBPF)", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(",")) if a.only else None
    todo = benches(only)
    if not todo:
        print(f"make bench: no bench matches {a.only!r}", file=sys.stderr)
        return 2
    results = [run(b, out) for b in todo]

    sys.path.insert(0, str(HERE))
    import report
    ok = {r.name: r.ok for r in results}
    (out / "outcomes.json").write_text(json.dumps(ok), encoding="utf-8")
    pages = report.write(out, Path(a.report), ok)

    print("\n===== make bench summary")
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {'OK    ' if r.ok else 'FAILED'}  {r.seconds:7.1f} s"
              + (f"  {'; '.join(r.problems)}" if r.problems else ""))
    print(f"report: {', '.join(str(p) for p in pages)}; raw outputs: {out}/")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"make bench: FAILED: {', '.join(failed)}")
        return 1
    print("make bench: every bench ran and met its goals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
