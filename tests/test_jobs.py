"""Unit tests for inpaintd.jobs: the fair queue and the result store."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inpaintd.jobs as jobs_mod
from inpaintd.jobs import FairQueue, Finished, QueuedJob, ResultStore
from inpaintd.validation import SubmitRequest
from inpaintd_protocol.messages import JobOptions
from inpaintd_protocol.wire import Message

_REQUEST = SubmitRequest(
    image=np.zeros((4, 6, 3), np.uint8), mask=np.zeros((4, 6), np.uint8), options=JobOptions(prompt="p", variants=2)
)


def job(owner: bytes, name: str) -> QueuedJob:
    return QueuedJob(owner=owner, request=_REQUEST, model="m", seeds=[1], id=name)


def pop_all(q: FairQueue) -> list[str]:
    out = []
    while (j := q.pop()) is not None:
        out.append(j.id)
    return out


A, B, C = b"A", b"B", b"C"


# --- FairQueue ---------------------------------------------------------------------------


def test_empty_queue():
    q = FairQueue()
    assert len(q) == 0
    assert q.pop() is None
    assert list(q.order()) == []
    assert q.drain() == []
    assert q.position("x") == -1


def test_fifo_within_one_client():
    q = FairQueue()
    for i in range(5):
        q.push(job(A, f"a{i}"))
    assert pop_all(q) == ["a0", "a1", "a2", "a3", "a4"]


def test_round_robin_across_clients():
    q = FairQueue()
    for i in range(3):
        q.push(job(A, f"a{i}"))
    q.push(job(B, "b0"))
    q.push(job(C, "c0"))
    q.push(job(B, "b1"))
    assert pop_all(q) == ["a0", "b0", "c0", "a1", "b1", "a2"]


def test_one_busy_client_cannot_starve_another():
    q = FairQueue()
    for i in range(20):
        q.push(job(A, f"a{i}"))
    q.push(job(B, "b0"))
    popped = pop_all(q)
    assert popped.index("b0") == 1


def test_client_that_empties_leaves_the_rotation():
    q = FairQueue()
    q.push(job(A, "a0"))
    q.push(job(B, "b0"))
    q.push(job(B, "b1"))
    assert q.pop().id == "a0"
    assert q.count(A) == 0
    assert pop_all(q) == ["b0", "b1"]


def test_len_and_count():
    q = FairQueue()
    q.push(job(A, "a0"))
    q.push(job(A, "a1"))
    q.push(job(B, "b0"))
    assert len(q) == 3
    assert q.count(A) == 2 and q.count(B) == 1 and q.count(C) == 0
    q.pop()
    assert len(q) == 2 and q.count(A) == 1


def test_order_matches_pop_order():
    q = FairQueue()
    for name, owner in [("a0", A), ("a1", A), ("b0", B), ("a2", A), ("c0", C), ("c1", C), ("b1", B)]:
        q.push(job(owner, name))
    predicted = [j.id for j in q.order()]
    assert pop_all(q) == predicted


def test_positions_match_pop_order():
    q = FairQueue()
    for name, owner in [("a0", A), ("a1", A), ("b0", B), ("c0", C), ("a2", A), ("b1", B)]:
        q.push(job(owner, name))
    positions = {j.id: q.position(j.id) for j in q.order()}
    popped = pop_all(q)
    assert [positions[name] for name in popped] == list(range(len(popped)))


def test_position_of_unknown_job_is_minus_one():
    q = FairQueue()
    q.push(job(A, "a0"))
    assert q.position("nope") == -1


def test_position_after_pop_shifts():
    q = FairQueue()
    q.push(job(A, "a0"))
    q.push(job(B, "b0"))
    q.push(job(A, "a1"))
    assert q.position("a1") == 2
    q.pop()
    assert q.position("b0") == 0 and q.position("a1") == 1


def test_remove_returns_job_and_takes_it_out():
    q = FairQueue()
    q.push(job(A, "a0"))
    q.push(job(A, "a1"))
    q.push(job(B, "b0"))
    removed = q.remove("a1")
    assert removed is not None and removed.id == "a1"
    assert len(q) == 2
    assert q.position("a1") == -1
    assert pop_all(q) == ["a0", "b0"]


def test_remove_unknown_returns_none():
    q = FairQueue()
    q.push(job(A, "a0"))
    assert q.remove("zzz") is None
    assert len(q) == 1


def test_remove_last_job_of_client_drops_client():
    q = FairQueue()
    q.push(job(A, "a0"))
    q.push(job(B, "b0"))
    q.push(job(B, "b1"))
    q.remove("a0")
    assert q.count(A) == 0
    assert pop_all(q) == ["b0", "b1"]


def test_remove_then_push_client_goes_to_the_back():
    q = FairQueue()
    q.push(job(A, "a0"))
    q.push(job(B, "b0"))
    q.remove("a0")
    q.push(job(A, "a1"))
    assert pop_all(q) == ["b0", "a1"]


def test_drain_returns_run_order_and_empties():
    q = FairQueue()
    for name, owner in [("a0", A), ("a1", A), ("b0", B)]:
        q.push(job(owner, name))
    drained = [j.id for j in q.drain()]
    assert drained == ["a0", "b0", "a1"]
    assert len(q) == 0 and q.pop() is None


def test_pop_returns_the_same_job_object():
    q = FairQueue()
    j = job(A, "a0")
    q.push(j)
    assert q.pop() is j


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "remove"]), st.integers(0, 3), st.integers(0, 30)), max_size=40))
def test_prop_order_always_predicts_pops(ops):
    q = FairQueue()
    pushed: list[str] = []
    for n, (op, owner, pick) in enumerate(ops):
        if op == "push":
            name = f"{owner}-{n}"
            q.push(job(bytes([65 + owner]), name))
            pushed.append(name)
        elif op == "pop":
            predicted = next(iter(q.order()), None)
            j = q.pop()
            assert (j.id if j else None) == (predicted.id if predicted else None)
        elif pushed:
            q.remove(pushed[pick % len(pushed)])
        # invariants after each step
        order = [j.id for j in q.order()]
        assert len(order) == len(q) == len(set(order))
        for owner_byte in {j.owner for j in q.order()}:
            mine = [j.id for j in q.order() if j.owner == owner_byte]
            assert mine == sorted(mine, key=lambda s: int(s.split("-")[1]))  # FIFO per client
    predicted = [j.id for j in q.order()]
    assert pop_all(q) == predicted


# --- QueuedJob ---------------------------------------------------------------------------


def test_job_summary_fields():
    j = job(A, "a0")
    s = j.summary()
    assert s["job"] == "a0" and s["state"] == "queued" and s["model"] == "m"
    assert (s["width"], s["height"]) == (6, 4)
    assert s["prompt"] == "p" and s["variants"] == 2


def test_job_ids_are_unique_by_default():
    ids = {QueuedJob(owner=A, request=_REQUEST, model="m", seeds=[1]).id for _ in range(100)}
    assert len(ids) == 100


# --- ResultStore -------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(jobs_mod, "time", c)
    return c


def finished(job_id: str, at: float) -> Finished:
    return Finished(job_id=job_id, owner=A, message=Message(type="result", body={"job": job_id}), at=at)


def test_store_put_get(clock):
    store = ResultStore()
    item = finished("j1", clock.now)
    store.put(item)
    assert store.get("j1") is item
    assert store.get("j2") is None


def test_store_ttl_expires(clock):
    store = ResultStore(ttl=10.0)
    store.put(finished("j1", clock.now))
    clock.now += 10.0
    assert store.get("j1") is not None  # exactly ttl old: still there
    clock.now += 0.01
    assert store.get("j1") is None


def test_store_ttl_expires_only_old_items(clock):
    store = ResultStore(ttl=10.0)
    store.put(finished("old", clock.now))
    clock.now += 6
    store.put(finished("new", clock.now))
    clock.now += 6
    assert store.get("old") is None
    assert store.get("new") is not None


def test_store_put_expires_stale_items(clock):
    store = ResultStore(ttl=5.0)
    store.put(finished("old", clock.now))
    clock.now += 100
    store.put(finished("new", clock.now))
    assert "old" not in store._items
    assert list(store._items) == ["new"]


def test_store_count_bound_evicts_oldest(clock):
    store = ResultStore(max_items=3)
    for i in range(5):
        store.put(finished(f"j{i}", clock.now))
    assert store.get("j0") is None and store.get("j1") is None
    assert [store.get(f"j{i}").job_id for i in (2, 3, 4)] == ["j2", "j3", "j4"]
    assert len(store._items) == 3


def test_store_re_put_refreshes_position(clock):
    store = ResultStore(max_items=2)
    store.put(finished("a", clock.now))
    store.put(finished("b", clock.now))
    store.put(finished("a", clock.now))  # a is newest again
    store.put(finished("c", clock.now))
    assert store.get("b") is None
    assert store.get("a") is not None and store.get("c") is not None


def test_store_default_timestamp_is_monotonic_now():
    import time

    before = time.monotonic()
    item = Finished(job_id="x", owner=A, message=Message(type="result"))
    assert before <= item.at <= time.monotonic()


def test_store_byte_bound_evicts_oldest_but_keeps_newest(clock):
    def big(job_id, n):
        return Finished(job_id=job_id, owner=A, message=Message(type="result", buffers=[bytes(n)]), at=clock.now)

    store = ResultStore(max_bytes=11_000)  # each item counts its buffers + 1 KiB
    store.put(big("a", 4000))
    store.put(big("b", 4000))
    assert store.get("a") is not None
    store.put(big("c", 4000))  # over the bound: the oldest goes
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None
    store.put(big("huge", 50_000))  # alone over the bound: still kept, everything older goes
    assert store.get("huge") is not None and store.get("b") is None and store.get("c") is None
