"""Load tests/kernel/rules_harness.c (pkt.h + rules.h, no tunnel logic) with bcc.

Shared by the kernel tests and tests/bench/rules."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from steerd.dataplane.rulemaps import EBPF_DIR, RuleMaps, inline_includes, rules_cflags
from steerd.dataplane.testrun import SkBuff, build_packet, test_run_ctx
from steerd.rules import Limits, PacketKey

HERE = Path(__file__).resolve().parent


class Harness:
    """The compiled harness: its programs, its RuleMaps, and a classify() via test run."""

    def __init__(self, limits: Limits = Limits()):
        from bcc import BPF   # imported late: unit tests never need bcc

        src = inline_includes((HERE / "rules_harness.c").read_text(), EBPF_DIR)
        # pkt.h uses the kernel's uapi headers; bcc finds them, -I is for our own
        self.bpf: Any = BPF(text=src, cflags=[f"-I{EBPF_DIR}", *rules_cflags(limits)])
        self.fn = self.bpf.load_func("rules_harness", BPF.SCHED_CLS)
        self.base_fn = self.bpf.load_func("rules_baseline", BPF.SCHED_CLS)
        self.maps = RuleMaps(self.bpf)

    def run(self, packet: bytes, ifindex: int = 0, repeat: int = 1, baseline: bool = False):
        ctx = SkBuff()
        ctx.cb[0] = ifindex
        fd = self.base_fn.fd if baseline else self.fn.fd
        return test_run_ctx(fd, packet, repeat, ctx)

    def verdict(self, key: PacketKey) -> tuple[int, int, int | None, int]:
        """(kind, tunnel, rule or None, gen) the eBPF matcher gives for *key*."""
        r = self.run(packet_for(key), ifindex=key.ifindex)
        rule = r.ctx.cb[2]
        return r.ctx.cb[4], r.ctx.cb[3], None if rule == 0xFFFFFFFF else rule, r.ctx.cb[1]


def packet_for(key: PacketKey) -> bytes:
    return build_packet(str(key.src), str(key.dst), key.proto, key.sport, key.dport, key.dscp)
