"""Staging in a short-lived child process: the daemon's probe loop keeps its GIL.

Parsing, validating and compiling 10,000 rules is ~0.6 s of pure Python. In a
worker thread of the daemon it holds the GIL the probe loop needs (a thread
cannot yield often enough: every 5 ms switch costs the loop up to 5 ms, and
the garbage collector's full passes over the new objects hold it for 0.1 s and
more). So the daemon runs steerd.staging's functions in a fresh interpreter
(``python -m steerd.stager``) that reads one request (a pickle on stdin),
answers on stdout and exits, taking its memory with it. Small inputs (under
CHILD_MIN_BYTES) are staged the same way in a worker thread: there the
child's start would cost more than the GIL it saves.

What comes back is built to be cheap for the daemon to take in: the compiled
tables as a flat RuleImage (bytes in the maps' layout) and the rules as
pickles of RULES_PER_CHUNK rules each, which the daemon unpickles one chunk
per turn of its loop (:func:`unpack_rules`). The same pickles go back into the
next request: the child diffs against the running rules without the daemon
pickling anything.
"""
from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from . import staging
from .config import SiteConfig
from .rules import Limits, Rule, RuleSet, diff
from .rules.image import RuleImage, image_of
from .yamlsrc import ValidationError

#: Rules per pickle: unpickling one chunk takes ~1 ms of the daemon's loop.
RULES_PER_CHUNK = 250
#: Inputs smaller than this are staged in a worker thread instead: a child costs
#: ~0.1 s to start, and 64 KiB of rules (~400) take ~30 ms of Python, which the
#: thread gives up every 5 ms (sys.getswitchinterval) like any other thread.
CHILD_MIN_BYTES = 64 * 1024
#: The child: this interpreter, this package (-P: not a steerd/ that happens to
#: lie in the daemon's working directory); at this much lower priority.
CHILD = (sys.executable, "-P", "-m", "steerd.stager")
CHILD_NICE = 5
#: A child that has not answered by then is killed and the request fails.
TIMEOUT_S = 300.0

RulesPickle = list[bytes]


@dataclass(frozen=True)
class StagedRules:
    """A rules file parsed, validated and compiled (by the child)."""

    path: str
    rules: RulesPickle          # the RuleSet's rules, RULES_PER_CHUNK per pickle
    nrules: int
    image: RuleImage


@dataclass(frozen=True)
class DiffText:
    """`rules apply`'s diff, rendered by the child: (as_dict, text, counts)."""

    as_dict: dict[str, Any]
    text: str
    added: int
    removed: int
    changed: int


class StagingFailed(RuntimeError):
    """The child died or did not answer: nothing was staged."""


def pack_rules(rules: tuple[Rule, ...]) -> RulesPickle:
    return [pickle.dumps(rules[i:i + RULES_PER_CHUNK], protocol=5)
            for i in range(0, len(rules), RULES_PER_CHUNK)]


async def unpack_rules(chunks: RulesPickle, path: str) -> RuleSet:
    """The RuleSet of *chunks*, one chunk per turn of the running loop."""
    rules: list[Rule] = []
    for chunk in chunks:
        rules.extend(pickle.loads(chunk))
        await asyncio.sleep(0)
    return RuleSet(tuple(rules), path)


def unpack_now(chunks: RulesPickle | None, path: str) -> RuleSet:
    """The RuleSet of *chunks* at once (before the daemon's loop runs)."""
    rules: list[Rule] = []
    for chunk in chunks or ():
        rules.extend(pickle.loads(chunk))
    return RuleSet(tuple(rules), path)


# ---------------------------------------------------------------- daemon side

def _input_bytes(req: dict[str, Any]) -> int:
    if req["op"] == "rules":
        return len(req["text"])
    if req["op"] == "file":
        try:
            return os.stat(req["cfg"].rules_file).st_size
        except OSError:
            return 0
    total = 0
    for path in (req["path"], req["running"].rules_file):   # the new config names its own
        try:                                                # rules file: a guess that
            total += os.stat(path).st_size if path else 0   # holds unless it moves
        except OSError:
            pass
    return total


async def _run(request: dict[str, Any], timeout: float = TIMEOUT_S) -> Any:
    if _input_bytes(request) < CHILD_MIN_BYTES:
        ok, value = await asyncio.to_thread(_outcome, request)
    else:
        ok, value = await _in_child(request, timeout)
    if not ok:
        raise ValidationError(value)
    return value


async def _in_child(request: dict[str, Any], timeout: float) -> tuple[bool, Any]:
    try:
        proc = await asyncio.create_subprocess_exec(*CHILD, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
    except OSError as exc:      # fork refused (memory, process limit)
        raise StagingFailed(f"staging child not started: {exc}") from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(pickle.dumps(request, protocol=5)),
                                        timeout)
    except BaseException as exc:    # a timeout, or the daemon stopping meanwhile
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):   # said as such: the control socket drops a
            raise StagingFailed(            # TimeoutError's request without a reply
                f"staging child did not answer in {timeout:g} s (killed)") from exc
        raise
    return _decoded(proc.returncode, out)


def _decoded(returncode: int | None, out: bytes) -> tuple[bool, Any]:
    if returncode is not None and returncode < 0:     # no traceback: say which signal
        raise StagingFailed(f"staging child killed by {_signal_name(-returncode)} "
                            "without an answer (the kernel log says if it was the OOM killer)")
    if returncode != 0 or not out:
        raise StagingFailed(f"staging child exited with {returncode} without an answer "
                            "(its error is in the daemon's log)")
    return pickle.loads(out)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def stage_file(cfg: SiteConfig, limits: Limits, timeout: float = TIMEOUT_S) -> StagedRules | None:
    """cfg.rules_file staged (None: the config has none), before the daemon's
    loop runs: its start. A big file is staged by a child all the same, so
    that its parse tree and the compiler's objects (~200 MB at 10,000 rules)
    never enter the daemon's heap, which glibc would not give all back."""
    req = {"op": "file", "cfg": cfg, "limits": limits, "nice": 0}
    if _input_bytes(req) < CHILD_MIN_BYTES:
        ok, value = _outcome(req)
    else:
        try:
            res = subprocess.run(CHILD, input=pickle.dumps(req, protocol=5),
                                 stdout=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise StagingFailed(f"staging child did not answer in {timeout:g} s") from exc
        ok, value = _decoded(res.returncode, res.stdout)
    if not ok:
        raise ValidationError(value)
    return value


async def stage_rules(text: str, path: str, cfg: SiteConfig, limits: Limits,
                      old: RulesPickle | None) -> tuple[StagedRules, DiffText]:
    """`rules apply`: the new rules staged, and the diff against *old* (the running
    rules as packed). Raises ValidationError (nothing staged) or StagingFailed."""
    return await _run({"op": "rules", "text": text, "path": path, "cfg": cfg, "limits": limits,
                       "old": old})


async def stage_config(path: str, running: SiteConfig, limits: Limits
                       ) -> tuple[SiteConfig, StagedRules | None]:
    """A reload: the config at *path* and its rules file staged (None: no rules_file)."""
    return await _run({"op": "config", "path": path, "running": running, "limits": limits})


# ---------------------------------------------------------------- child side

def _staged(ruleset: RuleSet, cfg: SiteConfig, limits: Limits) -> StagedRules:
    image = image_of(staging.compile_for(ruleset, cfg, limits))
    return StagedRules(ruleset.path, pack_rules(ruleset.rules), len(ruleset.rules), image)


def _answer(req: dict[str, Any]) -> Any:
    if req["op"] == "rules":
        new = staging.parse_rules_for(req["text"], req["path"], req["cfg"])
        staged = _staged(new, req["cfg"], req["limits"])
        d = diff(unpack_now(req["old"], req["path"]), new)
        return staged, DiffText(d.as_dict(), d.render(), len(d.added), len(d.removed),
                                len(d.changed))
    if req["op"] == "file":
        ruleset = staging.rules_of(req["cfg"])
        return _staged(ruleset, req["cfg"], req["limits"]) if ruleset is not None else None
    if req["op"] == "config":
        st = staging.stage_config(req["path"], req["running"], req["limits"])
        if st.ruleset is None or st.compiled is None:
            return st.cfg, None
        return st.cfg, StagedRules(st.ruleset.path, pack_rules(st.ruleset.rules),
                                   len(st.ruleset.rules), image_of(st.compiled))
    raise ValueError(f"unknown staging request {req['op']!r}")


def _outcome(req: dict[str, Any]) -> tuple[bool, Any]:
    """(True, the answer) or (False, the validation problems)."""
    try:
        return True, _answer(req)
    except ValidationError as exc:
        return False, exc.problems


def main() -> None:
    """The child: one request from stdin, its outcome to stdout; anything else
    is a crash (exit 1, the traceback on stderr: the daemon's log)."""
    gc.disable()         # ~10^6 objects, all alive until the answer is written; then exit
    req = pickle.load(sys.stdin.buffer)
    # on a busy host the daemon's loop (15 ms confirmation probes) comes first;
    # at start no loop runs yet: full speed
    os.nice(req.get("nice", CHILD_NICE))
    sys.stdout.buffer.write(pickle.dumps(_outcome(req), protocol=5))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    # run as steerd.stager, not __main__: the answer's classes unpickle by that name
    from steerd.stager import main as child_main
    child_main()
