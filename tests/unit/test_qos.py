"""steerd.dataplane.qos, the pure part: band mapping, classid encoding, the HTB plan."""
from __future__ import annotations

import pytest

from steerd.dataplane import qos

# (priority, band) at every band edge
EDGES = [(1, 0), (15, 0), (16, 1), (31, 1), (32, 2), (63, 2), (64, 3), (95, 3), (96, 4),
         (127, 4), (128, 5), (159, 5), (160, 6), (191, 6), (192, 7), (255, 7)]


# ------------------------------------------------------------------ band table

def test_band_table_covers_1_to_255_once_in_order():
    covered = [p for s in qos.BAND_SPECS for p in range(s.lo, s.hi + 1)]
    assert covered == list(range(1, 256))
    assert len(qos.BAND_SPECS) <= 8            # HTB prio 0..7


@pytest.mark.parametrize("priority,band", EDGES)
def test_band_edges(priority, band):
    assert qos.band_index(priority) == band
    assert qos.minor_for_priority(priority) == 0x10 + band
    assert qos.classid_for_priority(priority) == 0x5E0000 | (0x10 + band)


def test_profile_examples():
    assert qos.fmt_classid(qos.classid_for_priority(10)) == "5e:10"     # P10 voice: realtime
    assert qos.fmt_classid(qos.classid_for_priority(255)) == "5e:17"    # P255: bulk
    assert qos.BAND_SPECS[qos.band_index(10)].name == "realtime"
    assert qos.BAND_SPECS[qos.band_index(255)].name == "bulk"


def test_more_important_never_gets_a_worse_htb_prio():
    prios = [qos.band_index(p) for p in range(1, 256)]
    assert prios == sorted(prios)


@pytest.mark.parametrize("bad", [0, 256, -1, 1000, True, False, 1.5, "10", None])
def test_priority_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="1 to 255"):
        qos.band_index(bad)
    with pytest.raises(ValueError):
        qos.classid_for_priority(bad)


def test_classids_are_never_the_direct_queue():
    # 5e:0 would be HTB's unshaped direct queue; 5e:1 is the inner (cap) class
    for p in range(1, 256):
        cid = qos.classid_for_priority(p)
        assert cid >> 16 == 0x5E
        assert cid & 0xFFFF >= qos.LEAF_MINOR_BASE


# ------------------------------------------------------------------ bands_for

def test_bands_for_uses_only_the_needed_bands_and_the_default():
    bands = qos.bands_for([10, 12, 255, 250], default_priority=128)
    assert [b.minor for b in bands] == [0x10, 0x15, 0x17]
    assert [b.htb_prio for b in bands] == [0, 5, 7]
    assert [b.name for b in bands] == ["realtime", "normal", "bulk"]
    assert [b.classid for b in bands] == [0x5E0010, 0x5E0015, 0x5E0017]


def test_bands_for_floors_add_up_to_the_cap_and_favour_priority():
    bands = qos.bands_for(range(1, 256), default_priority=128)
    assert len(bands) == 8
    assert sum(b.rate_fraction for b in bands) == pytest.approx(1.0)
    fr = [b.rate_fraction for b in bands]
    assert fr == sorted(fr, reverse=True)
    assert min(fr) > 0


def test_bands_for_weights_are_normalised_over_used_bands():
    bands = qos.bands_for([10, 255], default_priority=255)
    w = {s.name: s.weight for s in qos.BAND_SPECS}
    total = w["realtime"] + w["bulk"]
    assert [b.rate_fraction for b in bands] == pytest.approx([w["realtime"] / total,
                                                              w["bulk"] / total])


def test_bands_for_no_rules_is_one_class():
    bands = qos.bands_for([], default_priority=200)
    assert len(bands) == 1
    assert bands[0].minor == qos.default_minor(200) == 0x17
    assert bands[0].rate_fraction == 1.0


def test_bands_for_refuses_bad_priorities():
    with pytest.raises(ValueError):
        qos.bands_for([0], 128)
    with pytest.raises(ValueError):
        qos.bands_for([10], 256)


# ------------------------------------------------------------------ prio_class table

def test_prio_class_table():
    t = qos.prio_class_table(default_priority=128)
    assert len(t) == 256
    assert t[0] == qos.classid_for_priority(128)          # unmatched / no priority
    assert all(t[p] == qos.classid_for_priority(p) for p in range(1, 256))


def test_prio_class_table_maps_missing_bands_to_the_default():
    bands = qos.bands_for([10], default_priority=255)
    t = qos.prio_class_table(255, bands)
    have = {b.classid for b in bands}
    assert set(t) == have
    assert t[10] == 0x5E0010 and t[40] == 0x5E0017 and t[0] == 0x5E0017


def test_prio_class_table_never_has_minor_zero():
    for default in (1, 128, 255):
        assert all(c & 0xFFFF for c in qos.prio_class_table(default))


# ------------------------------------------------------------------ the HTB plan

def test_plan_shape():
    bands = qos.bands_for([10, 255], 128)
    p = qos.plan(20, bands, qos.default_minor(128), frame=1514)
    cap = 20_000_000 // 8
    assert p["default"] == 0x15
    root = p["root"]
    assert root["handle"] == 0x5E0001 and root["parent"] == 0x5E0000
    assert root["rate"] == root["ceil"] == cap
    assert [leaf["handle"] for leaf in p["leaves"]] == [0x5E0010, 0x5E0015, 0x5E0017]
    assert all(leaf["parent"] == 0x5E0001 for leaf in p["leaves"])
    assert all(leaf["ceil"] == cap for leaf in p["leaves"])
    assert [leaf["prio"] for leaf in p["leaves"]] == [0, 5, 7]
    assert sum(leaf["rate"] for leaf in p["leaves"]) <= cap
    assert [leaf["qdisc"]["handle"] for leaf in p["leaves"]] == [0x5E100000, 0x5E150000, 0x5E170000]
    assert all(leaf["quantum"] == 1514 for leaf in p["leaves"])


@pytest.mark.parametrize("cap_mbps", [0.5, 1, 10, 20, 100, 1000, 10000, 40000])
def test_plan_bursts_keep_priority_latency_small(cap_mbps):
    """Another band can put at most one burst (cburst at the cap) ahead of a
    priority packet: <= 2 ms of the cap, or two full frames at low rates."""
    frame = 1514
    p = qos.plan(cap_mbps, qos.bands_for(range(1, 256), 128), 0x15, frame=frame)
    cap = qos.mbps_to_bytes(cap_mbps)
    for cls in [p["root"], *p["leaves"]]:
        for rate_key, burst_key in (("rate", "burst"), ("ceil", "cburst")):
            burst, rate = cls[burst_key], cls[rate_key]
            assert burst >= 2 * frame                    # HTB needs room for a full frame
            assert burst <= max(2 * frame, rate * qos.BURST_TIME) + 1
    wait = p["root"]["cburst"] / cap
    assert wait <= max(qos.BURST_TIME, 2 * frame / cap) + 1e-9


def test_plan_queue_limits():
    bands = qos.bands_for([10, 255], 128)
    p = qos.plan(20, bands, 0x15, frame=1514)
    cap = qos.mbps_to_bytes(20)
    limits = {leaf["handle"] & 0xFFFF: leaf["qdisc"]["limit"] for leaf in p["leaves"]}
    assert limits[0x10] == cap * 10 // 1000           # realtime: 10 ms at the cap
    assert limits[0x17] == cap * 100 // 1000          # bulk: 100 ms
    low = qos.plan(0.1, bands, 0x15, frame=1514)      # tiny cap: floor of 8 frames
    assert all(leaf["qdisc"]["limit"] == 8 * 1514 for leaf in low["leaves"])


def test_plan_large_caps_are_exact():
    p = qos.plan(40000, qos.bands_for([], 128), 0x15)
    assert p["root"]["rate"] == 40_000_000_000 // 8      # > 32 bits: pyroute2 sends rate64


@pytest.mark.parametrize("kwargs,match", [
    ({"cap_mbps": 0}, "cap_mbps"),
    ({"cap_mbps": -5}, "cap_mbps"),
    ({"cap_mbps": float("nan")}, "cap_mbps"),
    ({"cap_mbps": float("inf")}, "cap_mbps"),
    ({"cap_mbps": True}, "cap_mbps"),
    ({"bands": []}, "at least one band"),
    ({"default_minor": 0x11}, "default minor"),
    ({"bands": [qos.Band(0x10, 0, 0.5), qos.Band(0x10, 1, 0.5)]}, "duplicate"),
    ({"bands": [qos.Band(0x10, 0, 0.7), qos.Band(0x15, 5, 0.7)]}, "more than 1"),
    ({"bands": [qos.Band(0x20, 0, 0.5)], "default_minor": 0x20}, "outside"),
    ({"bands": [qos.Band(0x10, 8, 0.5)], "default_minor": 0x10}, "HTB prio"),
    ({"bands": [qos.Band(0x10, 0, 0)], "default_minor": 0x10}, "rate fraction"),
])
def test_plan_refuses_bad_input(kwargs, match):
    args = {"cap_mbps": 20, "bands": qos.bands_for([10], 128), "default_minor": 0x15}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        qos.plan(**args)


def test_fmt_classid():
    assert qos.fmt_classid(0x5E0001) == "5e:1"
    assert qos.fmt_classid(0x5E0017) == "5e:17"
    assert qos.fmt_classid(0x5E0000) == "5e:0"


# ------------------------------------------------------------------ leaf qdiscs (GSO)

def test_leaves_split_gso_below_a_gigabit():
    bands = qos.bands_for([10, 255], 128)
    for cap, kind in ((1, "tbf"), (20, "tbf"), (999, "tbf"), (1000, "bfifo"), (10000, "bfifo")):
        p = qos.plan(cap, bands, 0x15)
        assert {leaf["qdisc"]["kind"] for leaf in p["leaves"]} == {kind}, cap
        assert p["split_gso"] is (kind == "tbf")
    assert qos.plan(20, bands, 0x15, split_gso=False)["leaves"][0]["qdisc"]["kind"] == "bfifo"
    assert qos.plan(2000, bands, 0x15, split_gso=True)["leaves"][0]["qdisc"]["kind"] == "tbf"
    with pytest.raises(ValueError, match="cannot split GSO"):
        qos.plan(10000, bands, 0x15, split_gso=True)


def test_splitting_tbf_is_never_the_limit_and_passes_full_frames():
    """The TBF must let any frame through (bucket >= 1 frame, after the kernel's
    tick rounding) and run far above the cap; it cuts anything above 2 frames."""
    from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime

    frame = 1514
    for cap in (1, 20, 500, 999):
        p = qos.plan(cap, qos.bands_for([10], 128), 0x15, frame=frame)
        for leaf in p["leaves"]:
            q = leaf["qdisc"]
            assert q["rate"] >= 24 * qos.mbps_to_bytes(cap)
            assert q["burst"] == 2 * frame
            ticks = calc_xmittime(q["rate"], q["burst"])      # what pyroute2 sends
            max_size = ticks * 64e-9 * q["rate"]               # PSCHED_TICKS2NS: << 6
            assert frame <= max_size <= 2 * frame, (cap, ticks, max_size)
            assert q["limit"] >= 8 * frame
