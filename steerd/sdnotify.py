"""sd_notify over $NOTIFY_SOCKET without a dependency (Type=notify + WatchdogSec)."""
from __future__ import annotations

import asyncio
import os
import socket


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), path)
        except OSError:
            return False
    return True


async def watchdog_loop(stop: asyncio.Event) -> None:
    """Ping the watchdog at half its period while the event loop is alive."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    period = usec / 1e6 / 2
    while not stop.is_set():
        notify("WATCHDOG=1")
        await asyncio.sleep(period)
