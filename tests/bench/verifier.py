"""The verifier's cost of steerd's classifier as the daemon loads it
(ebpf/steer.c with the rule matcher, default map sizes): instructions
processed for `steer` (tc ingress) and `qos_classify` (a capped tunnel's
egress), against the kernel's limit of 1,000,000. Also what the rule-matcher
harness of tests/bench/rules costs, for comparison.

The figure is the kernel's own count (bpf_prog_info.verified_insns). The VM
lab (tests/vm/test_2_steering.py) reads it from its running steerd and prints
it for Debian 12's 6.1 kernel.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "kernel")]

LIMIT = 1_000_000
FUNCS = ("steer", "qos_classify")


# struct bpf_prog_info (uapi/linux/bpf.h): name at 64, verified_insns at 216
# (the verifier's "processed N insns", kept by the kernel since 5.16)
_INFO_SIZE, _NAME_AT, _VERIFIED_AT = 232, 64, 216
_BPF_PROG_GET_NEXT_ID, _BPF_PROG_GET_FD_BY_ID, _BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
_SYS_BPF = 321   # x86_64


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_SYS_BPF, cmd, attr, ctypes.sizeof(attr))


def prog_info(fd: int) -> tuple[str, int]:
    """(name, instructions the verifier processed) of a loaded program."""
    info = (ctypes.c_char * _INFO_SIZE)()
    attr = (ctypes.c_char * 16)()
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint32.from_buffer(attr, 4).value = _INFO_SIZE
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
    if _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr) < 0:
        raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
    name = bytes(info[_NAME_AT:_NAME_AT + 16]).split(b"\0")[0].decode()
    return name, ctypes.c_uint32.from_buffer(info, _VERIFIED_AT).value


def loaded(names: tuple[str, ...] = FUNCS) -> dict[str, int]:
    """{name: verified instructions} of the loaded programs called *names*
    (e.g. those of a running steerd; the newest one of each name)."""
    out: dict[str, int] = {}
    attr = (ctypes.c_char * 16)()
    prog_id = 0
    while True:
        ctypes.c_uint32.from_buffer(attr, 0).value = prog_id
        if _bpf(_BPF_PROG_GET_NEXT_ID, attr) < 0:
            return out
        prog_id = ctypes.c_uint32.from_buffer(attr, 4).value
        by_id = (ctypes.c_char * 16)()   # only prog_id set: the kernel wants the rest zero
        ctypes.c_uint32.from_buffer(by_id, 0).value = prog_id
        fd = _bpf(_BPF_PROG_GET_FD_BY_ID, by_id)
        if fd < 0:
            continue   # unloaded meanwhile
        try:
            name, insns = prog_info(fd)
        finally:
            os.close(fd)
        if name in names:
            out[name] = insns


def classifier_insns() -> dict[str, int]:
    """Load the daemon's classifier (its pins on a private bpffs, removed after)
    and return {function: instructions the verifier processed}."""
    from steerd.dataplane.program import Classifier, ProgramParams, remove_pins

    top = tempfile.mkdtemp(prefix="steerd-verifier-", dir="/run")
    subprocess.run(["mount", "-t", "bpf", "bpf", top], check=True)
    try:
        c = Classifier(ProgramParams(pin_dir=os.path.join(top, "steerd")))
        try:
            return {"steer": prog_info(c.fd)[1], "qos_classify": prog_info(c.qos_fd)[1]}
        finally:
            c.close()
            remove_pins(c.params.pin_dir)
    finally:
        subprocess.run(["umount", top], check=False)
        os.rmdir(top)


def main() -> int:
    if os.geteuid() != 0:
        print("tests/bench/verifier: needs root (eBPF)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "tests" / "bench"))
    from benchout import record, verdict
    from rules_harness import Harness

    insns = classifier_insns()
    h = Harness()
    harness = prog_info(h.fn.fd)[1]
    kernel = os.uname().release
    print(f"verifier, kernel {kernel}: instructions processed (limit {LIMIT:,})")
    ok = True
    for fn, n in insns.items():
        good = 0 < n <= LIMIT // 2
        ok &= good
        print(f"  {fn:<14} {n:>9,} insns = {n / 1e6:.2f}M   goal <= {LIMIT // 2:,} (half the limit): "
              f"{verdict(good)}")
    print(f"  {'rules_harness':<14} {harness:>9,} insns   (tests/bench/rules' program: parser + matcher only)")
    record(kernel=kernel, insns=insns, harness_insns=harness)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
