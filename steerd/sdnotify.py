"""sd_notify over $NOTIFY_SOCKET without a dependency (Type=notify + WatchdogSec)."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("steerd.sdnotify")


def notify(message: str) -> bool:
    """Send *message* to systemd; never raises (EMFILE, a vanished socket...):
    a failed notification must not take down the loop that sends it."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), path)
    except OSError as exc:
        log.warning("sd_notify %s failed: %s", message, exc)
        return False
    return True


async def watchdog_loop(stop: asyncio.Event, alive: Callable[[], bool] = lambda: True) -> None:
    """Ping the watchdog at half its period, but only while *alive()* says the
    daemon does its job (a recent probe heartbeat): a loop that still turns
    while probing stopped must be restarted by systemd, not kept alive."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        await stop.wait()   # no watchdog: nothing to do, but a supervised loop does not end
        return
    period = usec / 1e6 / 2
    while not stop.is_set():
        if alive():
            notify("WATCHDOG=1")
        else:
            log.error("probing has no recent heartbeat: not pinging the watchdog")
        await asyncio.sleep(period)
