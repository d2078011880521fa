"""Event hooks: an operator's script runs on chosen events (what mwan3.user,
VyOS's hooks and dpinger's alert command give their users), for sites that have
no Alertmanager.

    hooks:
      - on: [link_down, link_up, ha_failover]
        run: /usr/local/sbin/steerd-notify
        timeout: 5s

The script gets the event as environment variables (STEERD_EVENT = type,
STEERD_TUNNEL, STEERD_REASON, STEERD_TS, and STEERD_<KEY> for each further
scalar field, e.g. STEERD_SITE, STEERD_OLD, STEERD_NEW) and as one JSON object
on stdin (the line `steerctl events --json` prints).

The runner follows the event log like `steerctl events --follow` does, so the
daemon never waits for a script: emitting an event only queues it. Each hook
handles its events in order, one run at a time (a link_down's script finishes
before the link_up's starts); a run still going at the timeout is killed with
its whole process group. Every exit status is logged; a non-zero exit, a kill
at the timeout, a script that cannot start, or an event dropped because the
hook's queue is full (QUEUE events behind a stuck script) count as failures
(steerd_hook_failures_total{hook}).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Sequence

from .config import Hook
from .events import Event, EventLog

log = logging.getLogger("steerd.hooks")
QUEUE = 100


def environment(ev: Event) -> dict[str, str]:
    """The event as STEERD_* variables (on top of the daemon's own environment)."""
    d = ev.as_dict()
    env = dict(os.environ)
    env.update({"STEERD_EVENT": ev.type, "STEERD_TUNNEL": ev.tunnel or "",
                "STEERD_REASON": ev.reason, "STEERD_TS": d["ts"]})
    for key, value in ev.extra.items():
        if isinstance(value, (str, int, float, bool)) and key.isidentifier():
            env[f"STEERD_{key.upper()}"] = str(value)
    return env


class HookRunner:
    """Runs the configured hooks for the events of *events*; see the module doc."""

    def __init__(self, hooks: Sequence[Hook], events: EventLog):
        self.hooks = tuple(hooks)
        self.events = events
        self.runs = [0] * len(self.hooks)
        self.failures = [0] * len(self.hooks)
        self._queues: list[asyncio.Queue] = []
        self._tasks: list[asyncio.Task] = []
        self._running = 0

    def start(self) -> None:
        """Start following the event log (call inside the running loop)."""
        if not self.hooks:
            return
        self._queues = [asyncio.Queue(QUEUE) for _ in self.hooks]
        self._tasks = [asyncio.create_task(self._dispatch(self.events.follow()))]
        self._tasks += [asyncio.create_task(self._worker(i)) for i in range(len(self.hooks))]

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []

    async def _dispatch(self, follow: asyncio.Queue) -> None:
        try:
            while True:
                ev = await follow.get()
                for i, hook in enumerate(self.hooks):
                    if ev.type not in hook.on:
                        continue
                    try:
                        self._queues[i].put_nowait(ev)
                    except asyncio.QueueFull:
                        self.failures[i] += 1
                        log.warning("hook %s: %d events waiting, %s event dropped", hook.run,
                                    QUEUE, ev.type)
        finally:
            self.events.unfollow(follow)

    async def _worker(self, i: int) -> None:
        while True:
            ev = await self._queues[i].get()
            self.runs[i] += 1
            self._running += 1
            try:
                if not await self.run_one(self.hooks[i], ev):
                    self.failures[i] += 1
            finally:
                self._running -= 1

    def busy(self) -> bool:
        """A script is running (tests and shutdown wait on it)."""
        return self._running > 0

    async def run_one(self, hook: Hook, ev: Event) -> bool:
        """Run *hook* for *ev*; True when it exited 0 within its timeout."""
        data = (json.dumps(ev.as_dict()) + "\n").encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                hook.run, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=environment(ev), start_new_session=True)
        except OSError as exc:
            log.error("hook %s (%s): cannot run: %s", hook.run, ev.type, exc)
            return False
        try:
            _, err = await asyncio.wait_for(proc.communicate(data), hook.timeout)
        except asyncio.TimeoutError:
            await _kill_and_reap(proc)
            log.error("hook %s (%s): killed after the %gs timeout", hook.run, ev.type, hook.timeout)
            return False
        except asyncio.CancelledError:   # steerd stops or reloads: no script outlives its run
            await _kill_and_reap(proc)
            raise
        text = err.decode(errors="replace").strip()[-500:] if err else ""
        if proc.returncode != 0:
            log.error("hook %s (%s): exit status %d%s", hook.run, ev.type, proc.returncode,
                      f": {text}" if text else "")
            return False
        log.info("hook %s (%s): exit status 0", hook.run, ev.type)
        return True

    def counts(self) -> list[tuple[str, int, int]]:
        """Per hook (its script): runs started, runs failed (steerd_hook_*_total)."""
        return [(h.run, self.runs[i], self.failures[i]) for i, h in enumerate(self.hooks)]


def _kill_group(pid: int) -> None:
    """The script and whatever it started (it leads its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the script's group, then read its pipe to the end and reap it, so
    that neither the process nor its pipe outlives the run (bounded, should a
    grandchild have left the group and kept the pipe open)."""
    _kill_group(proc.pid)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.communicate(), 1.0)
