"""The probe loop's wake queue: exactly the due keys, each once, earliest first."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from steerd.schedule import WakeQueue


def test_due_returns_only_due_keys_and_respects_rescheduling():
    q = WakeQueue()
    q.set("a", 1.0)
    q.set("b", 2.0)
    q.set("a", 3.0)            # a reply moved a's wake-up later
    assert q.next_at() == 2.0
    assert q.due(2.5) == ["b"]
    assert q.due(2.9) == []
    q.set("c", 0.5)            # earlier than everything
    assert q.due(3.0) == ["c", "a"]
    assert len(q) == 0 and q.next_at() is None


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 100)), max_size=200), st.floats(0, 100))
def test_matches_a_plain_walk(ops, now):
    """Property: due(now) is what walking every key's latest time would find."""
    q, latest = WakeQueue(), {}
    for key, at in ops:
        q.set(key, at)
        latest[key] = at
    want = sorted((at, k) for k, at in latest.items() if at <= now)
    got = q.due(now)
    assert sorted(got) == sorted(k for _, k in want)
    rest = [at for k, at in latest.items() if at > now]
    assert q.next_at() == (min(rest) if rest else None)
