"""The simplified E-model (steerd/mos.py) against published reference points."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steerd import mos as m


def test_defaults_give_g107_r_93_2():
    # ITU-T G.107 (06/2015) 7.7: all parameters at their defaults give R = 93.2; no delay
    # and no loss add no impairment, and Annex B maps that R to a MOS of 4.41.
    assert m.delay_impairment(0) == 0 and m.loss_impairment(0) == 0
    assert m.R_DEFAULT == 93.2
    assert m.mos_of_r(93.2) == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize("r, mos", [(90, 4.34), (80, 4.03), (70, 3.60), (60, 3.10), (50, 2.58)])
def test_g109_category_limits(r, mos):
    # ITU-T G.109 Table 1: the R lower limits of the speech transmission quality
    # categories (best, high, medium, low, poor) and their MOS lower limits. G.109
    # prints two decimals, and 4.03 for R = 80 where Annex B's formula gives 4.024.
    assert m.mos_of_r(r) == pytest.approx(mos, abs=0.0065)


def test_annex_b_ends():
    # G.107 Annex B: MOS 1 for R < 0 and 4.5 for R > 100.
    assert m.mos_of_r(-20) == 1.0 and m.mos_of_r(0) == 1.0
    assert m.mos_of_r(100) == 4.5 and m.mos_of_r(130) == 4.5
    assert all(m.mos_of_r(r / 10) >= 1.0 for r in range(0, 100))


@pytest.mark.parametrize("d, idd", [(0, 0.0), (100, 2.4), (177.3, 4.2552), (200, 4.8 + 0.11 * 22.7),
                                    (400, 9.6 + 0.11 * 222.7)])
def test_cole_rosenbluth_delay_impairment(d, idd):
    # Cole & Rosenbluth 2001, eq. (4): Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3).
    assert m.delay_impairment(d) == pytest.approx(idd, abs=1e-9)


@pytest.mark.parametrize("codec, ppl, ie_eff", [
    # G.107 eq. (7-29) with BurstR = 1 and G.113 Appendix I's Ie/Bpl:
    ("g711", 0, 0.0), ("g711", 1, 95 * 1 / 26.1), ("g711", 5, 95 * 5 / 30.1),
    ("g711-noplc", 1, 95 * 1 / 5.3), ("g729", 0, 11.0), ("g729", 2, 11 + 84 * 2 / 21.0),
])
def test_effective_equipment_impairment(codec, ppl, ie_eff):
    assert m.loss_impairment(ppl, codec) == pytest.approx(ie_eff, abs=1e-9)


def test_worked_example():
    # 40 ms RTT, 5 ms jitter, 1 % loss on G.711: d = 20 + 10 + 10 = 40 ms, Id = 0.96,
    # Ie_eff = 95 / 26.1 = 3.640, R = 88.60, MOS 4.30 (G.109 "high": R 80..90).
    r = m.r_factor(40, 5, 1)
    assert r == pytest.approx(93.2 - 0.96 - 95 / 26.1, abs=1e-9)
    assert m.mos(40, 5, 1) == pytest.approx(4.303, abs=0.0005)
    # the stats form takes seconds and a ratio
    assert m.mos_of_stats(0.040, 0.005, 0.01) == pytest.approx(m.mos(40, 5, 1))
    assert m.mos_of_stats(None, None, 1.0) is None


def test_brownout_ranks_below_a_clean_link():
    # a 250 ms RTT or 30 % loss link is worse for voice than a clean 20 ms one
    clean = m.mos(20, 2, 0)
    assert m.mos(250, 2, 0) < clean and m.mos(20, 2, 30) < clean
    assert m.mos(20, 2, 30) < 2.6          # 30 % loss: G.109 "poor" or worse
    assert clean > 4.3


ms = st.floats(0, 5000, allow_nan=False)
pct = st.floats(0, 100, allow_nan=False)


@given(ms, ms, pct, st.sampled_from(sorted(m.CODECS)), st.floats(0, 500), st.floats(0, 500),
       st.floats(0, 50))
def test_mos_bounded_and_monotone(rtt, jitter, loss, codec, d_rtt, d_jit, d_loss):
    v = m.mos(rtt, jitter, loss, codec)
    assert 1.0 <= v <= 4.5
    assert m.mos(rtt + d_rtt, jitter, loss, codec) <= v + 1e-12
    assert m.mos(rtt, jitter + d_jit, loss, codec) <= v + 1e-12
    assert m.mos(rtt, jitter, min(100.0, loss + d_loss), codec) <= v + 1e-12


@given(st.floats(-50, 150), st.floats(0, 50))
def test_mos_of_r_monotone(r, dr):
    assert m.mos_of_r(r) <= m.mos_of_r(r + dr) + 1e-12
