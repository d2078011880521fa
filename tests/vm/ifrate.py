"""Sample interfaces' rx_packets counters every INTERVAL seconds; one line each:
"<monotonic time> <count of if 1> <count of if 2> ...". Run in a namespace with
`ip netns exec`; stops on SIGTERM or after SECONDS.

    python tests/vm/ifrate.py SECONDS INTERVAL ifname...
"""
from __future__ import annotations

import signal
import sys
import time


def main() -> int:
    seconds, interval, names = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    files = [open(f"/sys/class/net/{n}/statistics/rx_packets", "rb", buffering=0) for n in names]
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    end = time.monotonic() + seconds
    print("ready", flush=True)
    while not stop[0] and time.monotonic() < end:
        counts = []
        for f in files:
            f.seek(0)
            counts.append(f.read().strip().decode())
        print(f"{time.monotonic():.4f} {' '.join(counts)}", flush=True)
        time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
