"""steerd.xfrm's kernel reads in a real namespace: local addresses and links
through pyroute2, the SA dump through raw NETLINK_XFRM. This kernel has no ESP
and no XFRM interfaces; the VM lab (tests/vm/test_1_tunnels.py) reads real
SAs, counters and XFRM interfaces."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernel

# from inside a running asyncio loop, as the daemon calls them
READ = """
import asyncio, json
from steerd import xfrm
async def main():
    return {'local': sorted(xfrm.local_addresses()), 'interfaces': xfrm.xfrm_interfaces(),
            'sas': len(xfrm.sa_table())}
print(json.dumps(asyncio.run(main())))
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def test_local_addresses_links_and_sa_dump(netns):
    sh("ip", "-n", netns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1")
    sh("ip", "-n", netns, "link", "set", "wan0", "up")
    sh("ip", "-n", netns, "addr", "add", "192.0.2.10/24", "dev", "wan0")
    sh("ip", "-n", netns, "addr", "add", "2001:db8::10/64", "dev", "wan0", "nodad")
    # point-to-point: IFA_LOCAL is ours, IFA_ADDRESS is the peer's
    sh("ip", "-n", netns, "addr", "add", "10.9.9.1", "peer", "10.9.9.2/32", "dev", "wan0")
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", READ],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    local = set(got["local"])
    assert {"192.0.2.10", "2001:db8::10", "10.9.9.1"} <= local
    assert "10.9.9.2" not in local
    assert got["interfaces"] == {}          # veths are not XFRM interfaces
    assert got["sas"] == 0                  # the dump works and the namespace has no SA
