"""Estimated voice quality (MOS) of a tunnel from its loss, latency and jitter (pure).

The ITU-T G.107 E-model, simplified the way VoIP monitors do (Cole and Rosenbluth,
"Voice over IP Performance Monitoring", ACM SIGCOMM CCR 31(2), 2001):

    R   = 93.2 - Id - Ie_eff                      (G.107: R0 - Is = 93.2 with the
                                                   default parameters, advantage A = 0)
    Id  = 0.024 d + 0.11 (d - 177.3) H(d - 177.3) (Cole-Rosenbluth's fit of G.107's
                                                   delay impairment, default echo loss)
    d   = rtt / 2 + 2 * jitter + 10 ms            (one-way mouth-to-ear delay: half the
                                                   probe RTT, a jitter buffer of twice the
                                                   jitter, 10 ms of codec and packetisation)
    Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl + Bpl)   (G.107 eq. 7-29, random loss: BurstR = 1)
    MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6 (G.107 Annex B), 1 below R = 0, 4.5 above 100

Simplifications, said plainly: the path is taken as symmetric (one-way = RTT / 2);
the loss is the probes' loss, random (no burst ratio); jitter is the probes' RFC 3550
variation of the round trip, not of the voice stream; no echo, noise or wideband terms.
It ranks tunnels for voice and is comparable between them; it is not a call's true MOS.

Codec parameters (Ie, Bpl) are those of ITU-T G.113 Appendix I for random loss.
"""
from __future__ import annotations

from dataclasses import dataclass

R_DEFAULT = 93.2             # G.107: R with every parameter at its default value
DELAY_KNEE_MS = 177.3        # Cole-Rosenbluth: the delay impairment's slope rises here
JITTER_BUFFER = 2.0          # jitter buffer depth in units of the measured jitter
CODEC_DELAY_MS = 10.0        # codec lookahead + packetisation


@dataclass(frozen=True)
class Codec:
    ie: float    # equipment impairment factor without loss
    bpl: float   # packet-loss robustness factor (random loss)
    label: str


CODECS: dict[str, Codec] = {
    "g711": Codec(0.0, 25.1, "G.711 with packet loss concealment (G.711 Appendix I)"),
    "g711-noplc": Codec(0.0, 4.3, "G.711 without packet loss concealment"),
    "g729": Codec(11.0, 19.0, "G.729A with VAD"),
}
DEFAULT_CODEC = "g711"


def delay_impairment(one_way_ms: float) -> float:
    """Id of a one-way mouth-to-ear delay (ms), Cole-Rosenbluth's approximation."""
    d = max(0.0, one_way_ms)
    return 0.024 * d + (0.11 * (d - DELAY_KNEE_MS) if d > DELAY_KNEE_MS else 0.0)


def loss_impairment(loss_pct: float, codec: str = DEFAULT_CODEC) -> float:
    """Ie_eff of a random packet loss (percent) for *codec*."""
    c = CODECS[codec]
    ppl = min(100.0, max(0.0, loss_pct))
    return c.ie + (95.0 - c.ie) * ppl / (ppl + c.bpl)


def one_way_delay_ms(rtt_ms: float, jitter_ms: float) -> float:
    """The effective one-way delay the E-model is given (see the module docstring)."""
    return rtt_ms / 2 + JITTER_BUFFER * jitter_ms + CODEC_DELAY_MS


def r_factor(rtt_ms: float, jitter_ms: float, loss_pct: float, codec: str = DEFAULT_CODEC) -> float:
    return (R_DEFAULT - delay_impairment(one_way_delay_ms(rtt_ms, jitter_ms))
            - loss_impairment(loss_pct, codec))


def mos_of_r(r: float) -> float:
    """G.107 Annex B: the R factor as a mean opinion score, 1 .. 4.5."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # the polynomial dips just below 1 for 0 < R < 6.5: still "bad", so 1
    return max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)


def mos(rtt_ms: float, jitter_ms: float | None, loss_pct: float, codec: str = DEFAULT_CODEC) -> float:
    """Estimated MOS (1 .. 4.5) of a path with this probe RTT, jitter (ms) and loss (%).
    No jitter measured yet (fewer than two replies) counts as none."""
    return mos_of_r(r_factor(rtt_ms, jitter_ms or 0.0, loss_pct, codec))


def mos_of_stats(rtt_s: float | None, jitter_s: float | None, loss_ratio: float,
                 codec: str = DEFAULT_CODEC) -> float | None:
    """MOS from health.LinkStats units (seconds, ratio); None without an RTT:
    a tunnel that answered nothing has no voice quality to estimate."""
    if rtt_s is None:
        return None
    return mos(rtt_s * 1000, None if jitter_s is None else jitter_s * 1000, loss_ratio * 100, codec)
