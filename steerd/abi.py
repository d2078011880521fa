"""Every number and map value layout the Python side shares with the C side (ebpf/).

The classifier is compiled from C at start, the tables it reads are filled from
Python: a number that differs between the two is a silent misclassification,
not an error. So each shared number is defined here once, under the name the C
uses, and tests/unit/test_abi.py parses ebpf/*.c and ebpf/*.h and fails when
the two sides disagree (or when C grows a field, verdict or fallback kind that
has no mirror here). Python modules import these; none repeats a literal.
"""
from __future__ import annotations

import ctypes as ct

# ---- steer.c ---------------------------------------------------------------------
#: Slot and flow entries that carry no tunnel; also "this wan has no tunnel" in the
#: rule matcher's wan table (rules.h calls it RL_NONE).
NO_TUNNEL = 0xFFFFFFFF
#: Entries of the tunnels and tstats maps: tunnel indexes are 0..MAX_TUNNELS-1.
#: The loader passes it as -DMAX_TUNNELS; steer.c's default must agree.
MAX_TUNNELS = 8


class SteerCfg(ct.Structure):
    """struct steer_cfg, the single entry of the steer_cfg map."""

    _fields_ = [("nslots", ct.c_uint32), ("mark_mask", ct.c_uint32), ("flow_idle_ns", ct.c_uint64)]


# ---- pkt.h: the flow hash (steerd.testing.flowhash is its Python twin) -------------
FH_SEED = 0x5EED5EED      # initial value, xor the L4 protocol
FH_MUL = 0x9E3779B1       # per-word multiply
FH_ROT = 13               # per-word rotate left
FH_FMIX1 = 0x85EBCA6B     # murmur3 finaliser multipliers
FH_FMIX2 = 0xC2B2AE35

# ---- rules.h -----------------------------------------------------------------------
RL_NONE = NO_TUNNEL
#: Field numbers: bit positions in rl_cfg.used and indexes of the per-field bitmaps.
RL_F_SRC = 0
RL_F_DST = 1
RL_F_SPORT = 2
RL_F_DPORT = 3
RL_F_PROTO = 4
RL_F_DSCP = 5
RL_F_INGRESS = 6
RL_NF = 7
#: Verdict kinds (struct rule_verdict.kind).
RV_NONE = 0       # no rule matched: spread
RV_TUNNEL = 1     # pinned: use the verdict's tunnel
RV_SPREAD = 2     # matched, pinned wan unusable, fallback auto: spread
RV_DROP = 3       # matched, pinned wan unusable, fallback drop
#: Fallback kinds (struct rl_rule.fb_kind).
RL_FB_AUTO = 0
RL_FB_DROP = 1
RL_FB_WAN = 2
#: Address table entry flag: the low 31 bits index a chunk, else they are an S id.
RL_CHUNK = 0x80000000
#: Fixed capacities of the matcher (per rule set).
RL_MAX_WANS = 16
RL_MAX_INGRESS = 256
#: Default capacities; the loader passes its own as -D flags (rulemaps.rules_cflags).
MAX_RULES = 16384
RL_MAX_BITMAPS = 65536
RL_MAX_WORDS = 524288
RL_MAX_CHUNKS = 65536
RL_MAX_CHUNKS6 = 65536


class RlCfg(ct.Structure):
    """struct rl_cfg, one per rule set half."""

    _fields_ = [("gen", ct.c_uint32), ("nrules", ct.c_uint32), ("used", ct.c_uint32),
                ("ingress_default", ct.c_uint32)]


class RlRule(ct.Structure):
    """struct rl_rule, one per rule: the compiler's action tuples in this order."""

    _fields_ = [("wan", ct.c_uint32), ("fb_kind", ct.c_uint32), ("fb_wan", ct.c_uint32),
                ("prio", ct.c_uint32)]


# ---- dup.h: packet duplication --------------------------------------------------
#: A wan-table value with this bit set indexes dup_tab (tunnel ids stay below it).
DUP_FLAG = 0x40000000
#: Entries of dup_tab and dup_stats (index 0 unused: skb->tc_index 0 = no copy).
DUP_MAX = 4096


class DupEntry(ct.Structure):
    """struct dup_entry, one per duplicated rule and site that copies now."""

    _fields_ = [("tunnel", ct.c_uint32), ("src_ifindex", ct.c_uint32),
                ("ifindex", ct.c_uint32), ("copy_tunnel", ct.c_uint32), ("rewrite", ct.c_uint32),
                ("mac", ct.c_uint8 * 12)]


#: Python mirrors of C structs, by C name (the contract test compares the layouts).
STRUCTS: dict[str, type[ct.Structure]] = {"steer_cfg": SteerCfg, "rl_cfg": RlCfg, "rl_rule": RlRule,
                                          "dup_entry": DupEntry}
#: C name prefixes mirrored completely: a C #define with one of these has a twin here.
COMPLETE_PREFIXES = ("FH_", "RL_F_", "RV_", "RL_FB_")
