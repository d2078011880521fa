"""Load tests/kernel/rules_harness.c (pkt.h + rules.h, no tunnel logic) with bcc.

Shared by the kernel tests and tests/bench/rules."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from steerd.dataplane.rulemaps import RuleMaps, rules_cflags
from steerd.dataplane.sources import ebpf_dir, inline_includes
from steerd.testing.testrun import SkBuff, build_packet, test_run_ctx
from steerd.rules import Limits, PacketKey

HERE = Path(__file__).resolve().parent


class Harness:
    """The compiled harness: its programs, its RuleMaps, and a classify() via test run."""

    def __init__(self, limits: Limits = Limits()):
        from bcc import BPF   # imported late: unit tests never need bcc

        src = inline_includes((HERE / "rules_harness.c").read_text())
        # pkt.h uses the kernel's uapi headers; bcc finds them, -I is for our own
        self.bpf: Any = BPF(text=src.encode(), cflags=[f"-I{ebpf_dir()}", *rules_cflags(limits)])
        self.fn = self.bpf.load_func(b"rules_harness", BPF.SCHED_CLS)
        self.base_fn = self.bpf.load_func(b"rules_baseline", BPF.SCHED_CLS)
        self.nocount_fn = self.bpf.load_func(b"rules_harness_nocount", BPF.SCHED_CLS)
        self.maps = RuleMaps(self.bpf)

    def run(self, packet: bytes, ifindex: int = 0, repeat: int = 1, baseline: bool = False,
            count_hits: bool = True):
        ctx = SkBuff()
        ctx.cb[0] = ifindex
        fd = self.base_fn.fd if baseline else self.fn.fd if count_hits else self.nocount_fn.fd
        return test_run_ctx(fd, packet, repeat, ctx)

    def verdict(self, key: PacketKey, count_hits: bool = True) -> tuple[int, int, int | None, int]:
        """(kind, tunnel, rule or None, gen) the eBPF matcher gives for *key*."""
        return self.verdict_prio(key, count_hits)[:4]

    def verdict_prio(self, key: PacketKey, count_hits: bool = True
                     ) -> tuple[int, int, int | None, int, int]:
        """verdict() plus the rule's QoS priority (rule_verdict.prio)."""
        r = self.run(packet_for(key), ifindex=key.ifindex, count_hits=count_hits)
        rule = r.ctx.cb[2]
        return (r.ctx.cb[4], r.ctx.cb[3], None if rule == 0xFFFFFFFF else rule, r.ctx.cb[1],
                r.ctx.priority)


def packet_for(key: PacketKey) -> bytes:
    return build_packet(str(key.src), str(key.dst), key.proto, key.sport, key.dport, key.dscp)


def verifier_stats(bpf: Any, func: str, prog_type: int = 3) -> str:
    """Load *func* again through a raw BPF_PROG_LOAD with log_level 4 (stats
    only) and return the verifier's summary ("processed N insns ..."); on
    rejection, the tail of a full log. bcc hides both behind a small buffer."""
    import ctypes as ct
    import os

    insns = bpf.dump_func(func.encode())
    lic = ct.create_string_buffer(b"GPL")
    code = ct.create_string_buffer(insns, len(insns))

    def load(level: int, size: int) -> tuple[int, bytes]:
        log = ct.create_string_buffer(size)
        attr = bytearray(144)
        ct.c_uint32.from_buffer(attr, 0).value = prog_type
        ct.c_uint32.from_buffer(attr, 4).value = len(insns) // 8
        ct.c_uint64.from_buffer(attr, 8).value = ct.addressof(code)
        ct.c_uint64.from_buffer(attr, 16).value = ct.addressof(lic)
        ct.c_uint32.from_buffer(attr, 24).value = level
        ct.c_uint32.from_buffer(attr, 28).value = size
        ct.c_uint64.from_buffer(attr, 32).value = ct.addressof(log)
        libc = ct.CDLL(None, use_errno=True)
        abuf = (ct.c_char * len(attr)).from_buffer(attr)
        fd = libc.syscall(321, 5, abuf, len(attr))     # SYS_bpf, BPF_PROG_LOAD
        if fd >= 0:
            os.close(fd)
        return fd, log.value

    fd, log = load(4, 1 << 16)
    if fd >= 0:
        return log.decode(errors="replace").strip()
    _, log = load(1, 1 << 26)
    return "REJECTED\n" + log.decode(errors="replace")[-4000:]
