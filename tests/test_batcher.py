"""vitrt.Batcher (vitrt/batcher.py) on a backend with a GPU's cost shape, and Engine(batching=True) with
its asyncio API on the small ViT. Timing bounds here are bounds on scheduling (how long a request can
wait), not speed measurements: each is several times what the schedule needs, so that a slow CI
machine does not fail them (the measured numbers are in docs/benchmarks.md, "In-process batching")."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import vitrt
from vitrt.batcher import Batcher, wait
from vitrt.errors import ImageError, InputError, Overloaded

A, B = 0.040, 0.001  # a batch costs A + B*n seconds: a fixed launch cost much larger than the per-image one


class CostModel:
    """run_batch for the Batcher: one batch at a time (a lock, as a GPU stream), costing A + B*n; echoes
    each row's marker so that every caller can check it got exactly its own rows."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sizes: list[int] = []
        self.concurrent = 0

    def __call__(self, batch: np.ndarray) -> dict:
        with self.lock:
            self.sizes.append(len(batch))
            time.sleep(A + B * len(batch))
            return {"marker": batch[:, 0].astype(np.int64) * 10, "other": batch.astype(np.float32)}


def _calls(n_callers: int, calls_each: int, fn) -> tuple[list, float]:
    """``n_callers`` threads, each making ``calls_each`` calls of fn(caller, k); (results, seconds)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n_callers) as pool:
        results = list(pool.map(lambda c: [fn(c, k) for k in range(calls_each)], range(n_callers)))
    return results, time.perf_counter() - t0


def test_32_callers_get_their_own_rows_4x_faster_than_without_batching():
    """32 threads, each asking one image at a time: batched, throughput is at least 4x that of the same
    calls without batching (each its own batch, in turn); p99 latency stays under max_delay plus two
    batch times; no request is lost or answered twice."""
    model = CostModel()
    marker = lambda c, k: np.array([[1000 * c + k]], dtype=np.int64)  # noqa: E731

    def plain(c, k):
        t0 = time.perf_counter()
        out = model(marker(c, k))
        return out["marker"][0], time.perf_counter() - t0

    plain_results, plain_s = _calls(32, 4, plain)
    batcher = Batcher(model, max_batch=32, max_delay_ms=5, max_queue=256)

    def batched(c, k):
        t0 = time.perf_counter()
        out = batcher.submit(marker(c, k)).result()
        return out["marker"][0], time.perf_counter() - t0

    model.sizes.clear()
    results, batched_s = _calls(32, 4, batched)
    batcher.close()
    for got in (plain_results, results):
        answers = [a for caller in got for a, _ in caller]
        assert sorted(answers) == sorted(10 * (1000 * c + k) for c in range(32) for k in range(4))  # own, once
        assert [[a for a, _ in caller] for caller in got] == [[10 * (1000 * c + k) for k in range(4)] for c in range(32)]
    assert sum(model.sizes) == 128 and batcher.images == 128  # nothing run twice
    assert plain_s / batched_s >= 4, (plain_s, batched_s, model.sizes)
    p99 = np.percentile([t for caller in results for _, t in caller], 99)
    assert p99 < 0.005 + 2 * (A + B * 32) + 0.05, (p99, model.sizes)  # + 50 ms of thread scheduling slack


def test_a_lone_caller_waits_for_nothing():
    """Idle backend: a request goes at once, not after max_delay_ms (set to 1 s here to show it)."""
    model = CostModel()
    batcher = Batcher(model, max_batch=8, max_delay_ms=1000)
    t0 = time.perf_counter()
    for k in range(3):
        assert batcher.submit(np.array([[k]])).result()["marker"][0] == 10 * k
    assert time.perf_counter() - t0 < 3 * (A + B) + 0.5  # three batch times, not three seconds
    batcher.close()


def test_requests_that_arrive_during_a_batch_meet_in_the_next():
    model = CostModel()
    batcher = Batcher(model, max_batch=8, max_delay_ms=20)
    first = batcher.submit(np.zeros((1, 1), np.int64))
    time.sleep(A / 4)  # the first batch runs
    rest = [batcher.submit(np.full((1, 1), i, np.int64)) for i in range(1, 6)]
    assert [f.result()["marker"][0] for f in rest] == [10 * i for i in range(1, 6)] and first.result()
    batcher.close()
    assert model.sizes == [1, 5]


def test_a_big_call_is_split_and_joined_in_order_and_queue_limits_hold():
    model = CostModel()
    batcher = Batcher(model, max_batch=4, max_delay_ms=1, max_queue=12)
    out = batcher.submit(np.arange(10).reshape(10, 1)).result()
    assert out["marker"].tolist() == [10 * i for i in range(10)] and model.sizes == [4, 4, 2]
    with pytest.raises(InputError, match="a call of 13 images is larger than max_queue=12"):
        batcher.submit(np.zeros((13, 1)))
    with pytest.raises(InputError, match="expected an array of one or more images"):
        batcher.submit(np.zeros((0, 1)))
    batcher.close()


def test_a_full_queue_raises_overloaded_at_once_and_timeouts_leave_the_queue():
    gate = threading.Event()

    def slow(batch):
        gate.wait(10)
        return {"marker": batch[:, 0]}

    batcher = Batcher(slow, max_batch=2, max_delay_ms=0, max_queue=4)
    running = batcher.submit(np.zeros((2, 1)))
    time.sleep(0.05)  # it has started: the queue is empty, the backend busy
    queued = [batcher.submit(np.ones((2, 1))), batcher.submit(np.ones((2, 1)))]
    t0 = time.perf_counter()
    with pytest.raises(Overloaded, match="the queue holds 4 of max_queue=4 images and this call brings 1"):
        batcher.submit(np.ones((1, 1)))
    assert time.perf_counter() - t0 < 0.05  # at once, not after a wait
    assert queued[1].cancel() and batcher.queued == 2  # a cancelled request leaves the queue at once
    t0 = time.perf_counter()
    with pytest.raises(Overloaded, match="waited 100 ms in the queue without starting"):
        wait(batcher.submit(np.ones((1, 1)), timeout_ms=100), 100)
    assert 0.09 < time.perf_counter() - t0 < 1.0
    gate.set()
    assert running.result()["marker"].shape == (2,) and queued[0].result()["marker"].tolist() == [1, 1]
    batcher.close()
    assert batcher.queued == 0


def test_a_backend_error_reaches_every_request_of_its_batch_and_close_drains():
    calls = []

    def failing(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("CUDA error 700")
        return {"marker": batch[:, 0]}

    batcher = Batcher(failing, max_batch=4, max_delay_ms=0)
    with pytest.raises(RuntimeError, match="CUDA error 700"):
        batcher.submit(np.zeros((1, 1))).result()
    accepted = [batcher.submit(np.full((1, 1), i)) for i in range(6)]
    batcher.close()  # drains what was accepted
    assert [f.result()["marker"][0] for f in accepted] == list(range(6))
    with pytest.raises(vitrt.BackendError, match="closed"):
        batcher.submit(np.zeros((1, 1)))


def test_rows_that_cannot_join_a_batch_never_stop_the_batcher():
    """With the Engine's input given (``item``), rows of another shape or dtype are refused at submit with
    got/expected. Without it, requests of different row shapes queued together run in separate batches
    (each concatenated batch has one shape): before, their np.concatenate killed the feeding thread."""
    model = CostModel()
    gate = threading.Event()

    def held(batch):
        gate.wait(10)
        return model(batch)

    batcher = Batcher(held, max_batch=4, max_delay_ms=0)
    first = batcher.submit(np.zeros((1, 1), np.int64))  # holds the backend while the next two queue
    a, b = batcher.submit(np.ones((1, 1), np.int64)), batcher.submit(np.ones((1, 2), np.int64))
    gate.set()
    assert wait(first, 5000)["other"].shape == (1, 1)
    assert wait(a, 5000)["other"].shape == (1, 1) and wait(b, 5000)["other"].shape == (1, 2)
    batcher.close()
    given = Batcher(model, max_batch=4, item=((1,), np.int64))
    for bad, got in ((np.zeros((1, 2), np.int64), "int64 rows of shape \\(2,\\)"),
                     (np.zeros((1, 1), np.float64), "float64 rows of shape \\(1,\\)")):
        with pytest.raises(InputError, match=f"{got}; expected int64 rows of shape \\(1,\\)"):
            given.submit(bad)
    assert wait(given.submit(np.zeros((1, 1), np.int64)), 5000)["marker"].tolist() == [0]
    given.close()


def test_a_split_call_expiring_in_the_queue_leaves_the_thread_running():
    """The first part of a split call expires in the queue while nobody waits on it (the thread fails it,
    and its callbacks cancel the later parts): the joined future gets Overloaded, the thread lives, the
    next request is answered, and none of the split call's parts reaches the backend. Before, the
    callbacks ran under the lock and mutated the queue being iterated: the thread died and every later
    request hung; and the later parts, taken in the same pass that expired the first, still ran."""
    sizes = []

    def slow(batch):  # the first batch outlasts the split call's 50 ms: its first part expires in the queue
        sizes.append(batch[:, 0].tolist())
        time.sleep(0.3)
        return {"marker": batch[:, 0]}

    batcher = Batcher(slow, max_batch=2, max_delay_ms=0)
    first = batcher.submit(np.zeros((1, 1)))
    joined = batcher.submit(np.ones((6, 1)), timeout_ms=50)
    with pytest.raises(Overloaded, match="without starting"):
        joined.result(timeout=10)  # the thread expires it when the first batch returns
    assert wait(first, 5000)["marker"].tolist() == [0]
    assert wait(batcher.submit(np.full((1, 1), 3.0)), 5000)["marker"].tolist() == [3.0]
    assert batcher._thread.is_alive() and batcher.queued == 0
    assert sizes == [[0.0], [3.0]]  # the split call's rows (ones) never ran
    batcher.close()


def test_nothing_raised_in_the_feeding_thread_stops_it():
    """A backend that returns the wrong rows (or raises) fails that batch's requests with the reason; the
    thread lives on and the next request is answered (within a bound, not forever)."""
    calls = []

    def short(batch):
        calls.append(len(batch))
        return {"marker": batch[:1, 0]} if len(calls) == 1 else {"marker": batch[:, 0]}

    batcher = Batcher(short, max_batch=4, max_delay_ms=0)
    with pytest.raises(vitrt.BackendError, match="expected a dict of outputs with 2 rows each"):
        wait(batcher.submit(np.zeros((2, 1))), 5000)
    assert wait(batcher.submit(np.full((2, 1), 7.0)), 5000)["marker"].tolist() == [7.0, 7.0]
    assert batcher._thread.is_alive()
    batcher.close()


def _started(batcher, rows):
    """``batcher.submit(rows)``'s future once the feeding thread has started it (up to 10 s)."""
    future = batcher.submit(rows)
    for _ in range(1000):
        if future.running():
            break
        time.sleep(0.01)
    return future


def test_the_safety_net_wakes_a_blocked_submit_and_fails_a_request_marked_running():
    """If taking a batch ever raises (it is not expected to: here _expire is made to, once, after it
    marked the queued request RUNNING), the feeding thread fails what it held and lives. Before, it
    emptied the queue without waking a submit blocked on the full queue (that caller slept until other
    traffic came), and the request already RUNNING made its own failure raise, which killed the thread."""
    hold = threading.Event()

    def model(batch):
        hold.wait(10)
        return {"marker": batch[:, 0]}

    batcher = Batcher(model, max_batch=2, max_delay_ms=0, max_queue=2)
    try:
        first = _started(batcher, np.zeros((2, 1)))
        queued = batcher.submit(np.ones((2, 1)))  # the queue full
        real, calls = batcher._expire, []

        def broken(now):  # the next pass: marks the queued request RUNNING (as expiring does), then raises
            calls.append(now)
            if len(calls) == 1:
                batcher._queue[0].future.set_running_or_notify_cancel()
                raise RuntimeError("a bug in taking a batch")
            return real(now)

        batcher._expire = broken
        third = {}
        blocked = threading.Thread(target=lambda: third.update(f=batcher.submit(np.full((2, 1), 3.0), block=True)))
        blocked.start()
        time.sleep(0.2)
        assert blocked.is_alive()  # waiting for room
        hold.set()  # the first batch returns; the next pass raises
        with pytest.raises(vitrt.BackendError, match="failed to take a batch: RuntimeError"):
            queued.result(10)
        blocked.join(5)
        assert not blocked.is_alive()  # woken by the safety net, not by other traffic
        assert wait(third["f"], 5000)["marker"].tolist() == [3.0, 3.0]
        assert wait(first, 5000)["marker"].tolist() == [0.0, 0.0] and batcher._thread.is_alive()
    finally:
        hold.set()
        batcher.close(10)


def test_a_split_call_cancelled_in_the_queue_runs_no_part():
    """Cancelling a queued split call reaches its parts one by one (callbacks); if the feeding thread
    takes a batch meanwhile it used to skip the cancelled first part and run the second. Here the first
    part's cancel callback waits (up to 1 s) for the feeding thread to take its next batch, so that
    window is open for certain."""
    seen, hold, next_taken = [], threading.Event(), threading.Event()

    def model(batch):
        seen.append(batch[:, 0].tolist())
        if len(seen) > 1:
            next_taken.set()
        hold.wait(10)
        return {"marker": batch[:, 0]}

    batcher = Batcher(model, max_batch=2, max_delay_ms=0)
    try:
        first = _started(batcher, np.zeros((1, 1)))
        call = batcher.submit(np.arange(1, 5).reshape(4, 1))  # two parts: rows 1-2 and 3-4
        parts = call.parts

        def slow_cancel(f):  # runs inside the first part's cancel, before the second is cancelled
            hold.set()  # the first batch returns: the feeding thread takes the next one now
            next_taken.wait(1)

        parts[0].add_done_callback(slow_cancel)
        assert call.cancel()
        assert wait(first, 5000)["marker"].tolist() == [0.0]
        assert wait(batcher.submit(np.full((1, 1), 9.0)), 5000)["marker"].tolist() == [9.0]
    finally:
        hold.set()
        batcher.close(10)
    assert seen == [[0.0], [9.0]] and all(p.cancelled() for p in parts), seen


def test_a_split_call_cancelled_as_its_first_part_starts_either_runs_whole_or_not_at_all():
    """The call's cancel landing just as the feeding thread starts its first part: the call used to be
    marked started only after that part was (a cancel in between succeeded, the caller was told the call
    had not started, and the part ran). The first part's future here tries the cancel from inside its own
    start, the narrowest window there is; the call now starts before its part, so that cancel fails and
    the call runs whole."""
    from concurrent.futures import Future

    seen, hold, tried = [], threading.Event(), []

    def model(batch):
        seen.append(batch[:, 0].tolist())
        hold.wait(10)
        return {"marker": batch[:, 0]}

    batcher = Batcher(model, max_batch=2, max_delay_ms=0)
    try:
        first = _started(batcher, np.zeros((1, 1)))
        call = batcher.submit(np.arange(1, 5).reshape(4, 1))  # two parts: rows 1-2 and 3-4

        class CancelsItsCall(Future):
            def set_running_or_notify_cancel(self):
                started = super().set_running_or_notify_cancel()
                tried.append(call.cancel())
                return started

        call.parts[0].__class__ = CancelsItsCall
        hold.set()
        assert wait(first, 5000)["marker"].tolist() == [0.0]
        if tried == [True]:  # the old order: cancelled, so no part may have run
            assert wait(batcher.submit(np.full((1, 1), 9.0)), 5000)["marker"].tolist() == [9.0]
            assert [1.0, 2.0] not in seen, ("a cancelled call's part ran", seen)
        assert tried == [False] and call.result(5)["marker"].tolist() == [1.0, 2.0, 3.0, 4.0], (tried, seen)
    finally:
        hold.set()
        batcher.close(10)


def test_an_nchw_artifact_batches_threads_and_coroutines_together(small_onnx_nchw, photos, crops):
    """A float32 NCHW artifact with batching: a thread's normalized [1, 3, 384, 384] infer and a
    coroutine's apredict (crops, normalized by the Engine as infer() does) meet in the batcher and each
    gets the plain Engine's answer. Before, apredict queued uint8 NHWC rows beside float32 NCHW ones and
    the feeding thread died on the concatenate: every caller then waited forever."""
    from vitrt.preprocess import normalize_nchw

    with vitrt.Engine(small_onnx_nchw, providers=["CPUExecutionProvider"]) as plain:
        meta = plain.metadata
        want = plain.infer(normalize_nchw(crops[:2], meta.data_config))
        want_top = plain.predict(photos[1], topk=3)
    with vitrt.Engine(small_onnx_nchw, providers=["CPUExecutionProvider"], batching=True, max_delay_ms=50) as engine:
        x = normalize_nchw(crops[:1], meta.data_config)

        async def both():
            loop = asyncio.get_running_loop()
            thread = loop.run_in_executor(None, lambda: engine.infer(x, timeout_ms=20000))
            return await asyncio.wait_for(asyncio.gather(thread, engine.apredict(photos[1], topk=3, timeout_ms=20000)), 30)

        out, top = asyncio.run(both())
    np.testing.assert_allclose(out["logits"][0], want["logits"][0], rtol=0, atol=1e-4 * np.abs(want["logits"]).max())
    assert [p.index for p in top] == [p.index for p in want_top]


def test_ainfer_normalizes_an_nchw_artifacts_crops_off_the_event_loop(small_onnx_nchw, crops):
    """ainfer on an NCHW artifact normalizes uint8 crops (tens of ms for a batch): that runs in the pool,
    not in the loop's thread (before: on the loop, which stalled every other coroutine meanwhile). Shown
    by the thread the check ran in, not by timing; the answer equals infer()'s."""
    with vitrt.Engine(small_onnx_nchw, providers=["CPUExecutionProvider"], batching=True) as engine:
        want = engine.infer(crops[:2])
        ran_in, check = [], engine._check_batch

        def spy(batch):
            ran_in.append(threading.current_thread())
            return check(batch)

        engine._check_batch = spy

        async def call():
            return threading.current_thread(), await engine.ainfer(crops[:2], timeout_ms=20000)

        loop_thread, got = asyncio.run(call())
    assert ran_in and loop_thread not in ran_in, (ran_in, loop_thread)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=1e-5 * np.abs(want["logits"]).max())


def test_a_cancelled_calls_later_turn_never_runs():
    """A call larger than max_queue runs in turns; its task is cancelled while a later turn waits in a
    pool thread for room in a really full queue. The pool thread is freed at the cancel, without waiting
    for room (before: it stayed blocked in submit, holding a pool worker, then queued the turn when room
    came and cancelled it after, a window in which the feeding thread could take and run it), and the
    turn never runs. The order is fixed: 6 rows at max_batch 4 = max_queue are turns of 4 and 2; while
    the first runs, another caller queues 3 rows, which wait for a full batch (max_delay 10 s), so the
    second turn (3 + 2 > 4) waits for room and nothing makes any until close()."""
    from vitrt.aio import AsyncEngine

    seen, others = [], []

    def model(batch):
        seen.append(batch[:, 0].tolist())
        if batch[0, 0] == 0:  # the first turn: another caller's 3 rows arrive meanwhile
            others.append(batcher.submit(np.array([[100], [101], [102]])))
        return {"marker": batch[:, 0]}

    batcher = Batcher(model, max_batch=4, max_delay_ms=10000, max_queue=4)
    real, blocked, returned = batcher.submit, threading.Event(), threading.Event()

    def submit(batch, timeout_ms=None, block=False, turn=None):
        if not block:
            return real(batch, timeout_ms, block)
        blocked.set()  # the later turn, about to wait for room
        try:
            return real(batch, timeout_ms, block, **({"turn": turn} if turn is not None else {}))
        finally:
            returned.set()

    batcher.submit = submit

    class Caller(AsyncEngine):
        _batcher = batcher

    async def main():
        task = asyncio.create_task(Caller()._await_batch(np.arange(6).reshape(6, 1), None))
        assert await asyncio.to_thread(blocked.wait, 10)
        await asyncio.sleep(0.2)  # inside submit, waiting: the queue holds 3 of 4 and the turn brings 2
        assert not returned.is_set() and batcher.queued == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(returned.wait, 5)  # freed at the cancel, the queue still full
        assert batcher.queued == 3

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        batcher.close(10)  # closing drains: the other caller's rows run now
    assert others[0].result(10)["marker"].tolist() == [100, 101, 102]
    assert seen == [[0, 1, 2, 3], [100, 101, 102]] and batcher.queued == 0, seen


def test_a_turn_given_up_before_it_reaches_the_queue_is_not_queued():
    """Batcher.abandon before the blocked submit runs (the cancel came first): submit raises
    CancelledError and queues nothing; after it was queued and before it started: it is cancelled and
    leaves the queue; a turn given up after it started runs to its end (nothing to take back)."""
    from concurrent.futures import CancelledError

    from vitrt.batcher import Turn

    hold = threading.Event()
    seen = []

    def model(batch):
        seen.append(batch[:, 0].tolist())
        hold.wait(10)
        return {"marker": batch[:, 0]}

    batcher = Batcher(model, max_batch=2, max_delay_ms=0, max_queue=4)
    try:
        first = _started(batcher, np.array([[0], [1]]))
        gone = Turn()
        batcher.abandon(gone)
        with pytest.raises(CancelledError):
            batcher.submit(np.array([[2], [3]]), None, block=True, turn=gone)
        assert batcher.queued == 0
        queued = Turn()
        f = batcher.submit(np.array([[4], [5]]), None, block=True, turn=queued)
        assert queued.future is f and batcher.queued == 2
        batcher.abandon(queued)
        assert f.cancelled() and batcher.queued == 0
        hold.set()
        assert first.result(10)["marker"].tolist() == [0, 1]
    finally:
        hold.set()
        batcher.close(10)
    assert seen == [[0, 1]]


def test_a_split_call_that_started_is_not_timed_out_and_one_that_did_not_runs_nothing():
    """timeout_ms means the call had not started. 16 rows at max_batch 4 take 4 batches (1 s) against a
    250 ms timeout: the first part starts at once, so the whole call is answered (before, the joined
    future never entered RUNNING and the timeout cancelled it after parts had run). Behind a batch that
    holds the backend, the same call times out with Overloaded and none of its parts runs."""
    model = CostModel()
    sizes = []

    def slow(batch):  # 4 batches of 0.25 s: the call takes 1 s, four times its 250 ms timeout
        sizes.append(len(batch))
        time.sleep(0.25)
        return model(batch)

    batcher = Batcher(slow, max_batch=4, max_delay_ms=1)
    rows = np.arange(16).reshape(16, 1)
    out = wait(batcher.submit(rows, timeout_ms=250), 250)  # an idle thread takes the first part at once
    assert out["marker"].tolist() == [10 * i for i in range(16)] and sizes == [4, 4, 4, 4]
    batcher.close()

    gate, running = threading.Event(), threading.Event()

    def held(batch):
        running.set()
        gate.wait(10)
        return model(batch)

    busy = Batcher(held, max_batch=4, max_delay_ms=0)
    first = busy.submit(np.zeros((1, 1), np.int64))
    assert running.wait(10)  # the first batch is running, holding the backend
    model.sizes.clear()
    with pytest.raises(Overloaded, match="without starting"):
        wait(busy.submit(rows, timeout_ms=60), 60)
    gate.set()
    assert wait(first, 5000)["marker"].tolist() == [0]
    busy.close()
    assert model.sizes == [1]  # only the request that held the backend ran


def test_an_engine_dropped_without_close_is_collected_and_its_thread_ends(small_onnx, crops):
    """The ownership rule of concurrent.futures: the feeding thread must not keep the Engine (and its
    backend, on a GPU its memory) alive. Dropped without close(), the Engine is collected and its batcher
    closed: the thread ends (before, each such Engine leaked its thread and backend for good)."""
    import gc
    import weakref

    engine = vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"], batching=True)
    assert engine.infer(crops[:1])["logits"].shape[0] == 1
    thread, ref = engine._batcher._thread, weakref.ref(engine)
    del engine
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())
    thread.join(10)
    assert not thread.is_alive()


def _in_a_fork(child) -> tuple[int, str]:
    """Run ``child()`` (returns a short str) in a forked process; (exit code, what it wrote). The parent
    waits at most 30 s, then kills it: a hang in the child fails the test instead of the suite."""
    import os
    import signal

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            msg = child()
        except BaseException as exc:
            msg, code = f"{type(exc).__name__}: {exc}", 3
        os.write(w, msg.encode()[:4000])
        os._exit(code)
    os.close(w)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return -1, "hung"
        time.sleep(0.05)
    out = os.read(r, 4000).decode()
    os.close(r)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.parametrize("lock_held", [False, True])
def test_a_forked_child_gets_a_clear_error_not_a_hang(small_onnx, crops, lock_held):
    """fork() copies the Batcher but not its thread: a child's predict hung for good, and a fork while the
    thread held the lock deadlocked submit. Now the child's call raises BackendError naming the fork,
    also when the lock was held at the fork (a thread of the parent holds it, as the feeding thread does
    while it takes a batch); the parent's engine keeps working."""
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"], batching=True) as engine:
        held, release = threading.Event(), threading.Event()

        def hold():
            with engine._batcher._cv:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        if lock_held:
            holder.start()
            assert held.wait(10)

        def child():  # the call refuses; close() (a `with` block's end) takes the batcher's lock: it must not hang
            from vitrt import engine as engine_module

            if not any(b is engine.backend for b in engine_module._INHERITED):
                return "the fork did not keep the inherited backend"
            try:
                engine.infer(crops[:1])
            except vitrt.BackendError as exc:
                engine.close()  # frees nothing of the parent's: ORT's session (its thread pool) is kept
                kept = engine.backend.closed and engine.backend.session is not None
                return str(exc) + " | closed" + (" | kept" if kept else "")
            return "answered"

        code, out = _in_a_fork(child)
        release.set()
        if lock_held:
            holder.join(10)
        assert code == 0 and "is a fork of it" in out and "expected a new Engine" in out, (code, out)
        assert out.endswith(" | closed | kept"), out  # before: it freed the session; it hung 1 suite in 4
        assert engine.infer(crops[:1])["logits"].shape[0] == 1  # the parent's engine is unaffected


def test_a_call_larger_than_max_queue_runs_in_turns_beside_other_callers():
    """Beside two callers that keep the queue busy, a 9-image call at max_queue 4 runs in max_batch
    turns, each later turn waiting for room rather than failing; every caller gets its own rows. Two, not
    three: the first turn (2 images) fails fast like any call when the queue is full, and two one-image
    callers leave it room (2 + 2 <= 4) at every instant."""
    from vitrt.batcher import run

    model = CostModel()
    batcher = Batcher(model, max_batch=2, max_delay_ms=1, max_queue=4)
    stop = threading.Event()
    answered = []

    def other(c):
        k = 0
        while not stop.is_set():
            try:
                out = wait(batcher.submit(np.array([[1000 * c + k]], np.int64)), 5000)
                answered.append(out["marker"][0] == 10 * (1000 * c + k))
            except Overloaded:
                pass  # the queue is full at times: that is the other callers' load, not the big call's
            k += 1

    threads = [threading.Thread(target=other, args=(c,)) for c in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            out = run(batcher, np.arange(9).reshape(9, 1))
            assert out["marker"].tolist() == [10 * i for i in range(9)]
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        batcher.close()
    assert answered and all(answered)


def test_a_call_larger_than_max_queue_works_with_batching_as_without(small_onnx, crops):
    """max_queue bounds what waits, not what a call may ask: with batching on, a call of more images than
    max_queue runs in max_queue-sized turns and equals the plain Engine's answer (before: InputError with
    batching, an answer without)."""
    big = np.concatenate([crops, crops[:3]])  # 9 images, max_queue 4
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"]) as plain:
        want = plain.infer(big)
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"], batching=True, max_queue=4) as engine:
        got = engine.infer(big, timeout_ms=30000)
        emb = asyncio.run(engine.aembed(list(big), timeout_ms=30000))
    for name in ("logits", "embedding"):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-4 * np.abs(want[name]).max())
    np.testing.assert_allclose(emb, want["embedding"], rtol=0, atol=1e-4 * np.abs(want["embedding"]).max())


# --- Engine(batching=True) and the asyncio API on the small ViT -------------------------------------------------


@pytest.fixture(scope="module")
def crops(photos):
    return np.stack([vitrt.preprocess(p) for p in photos[:6]])


def test_engine_batching_gives_each_thread_its_own_results(small_onnx, photos, crops):
    """Concurrent predict/embed/infer from 6 threads through the batcher equal the plain Engine's; a bad
    image fails its own call only, with the same ImageError."""
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"]) as plain:
        want = plain.infer(crops)
        want_top = [plain.predict(p, topk=3) for p in photos[:6]]
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"], batching=True, max_delay_ms=20) as engine:
        assert "batching=(max_batch=4" in repr(engine)

        def call(i):
            if i == 6:
                with pytest.raises(ImageError, match="not an image"):
                    engine.predict(b"not an image at all")
                return None
            return engine.infer(crops[i:i + 1]), engine.embed(photos[i]), engine.predict(photos[i], topk=3)

        with ThreadPoolExecutor(7) as pool:
            got = list(pool.map(call, range(7)))
        for i in range(6):
            out, emb, top = got[i]
            np.testing.assert_allclose(out["logits"][0], want["logits"][i], rtol=0, atol=1e-4 * np.abs(want["logits"]).max())
            np.testing.assert_allclose(emb, want["embedding"][i], rtol=0, atol=1e-4 * np.abs(want["embedding"]).max())
            assert [p.index for p in top] == [p.index for p in want_top[i]]
        assert engine._batcher.batches < engine._batcher.images  # batches were formed
        with pytest.raises(InputError, match="max_batch=9; expected an integer from 1 to the artifact's max batch 4"):
            vitrt.Engine(small_onnx, batching=True, max_batch=9)
    with pytest.raises(InputError, match="max_delay_ms apply with batching=True"):
        vitrt.Engine(small_onnx, max_delay_ms=5)
    with vitrt.Engine(small_onnx) as engine, pytest.raises(InputError, match="timeout_ms=10 applies with batching=True"):
        engine.predict(photos[0], timeout_ms=10)


@pytest.mark.parametrize("batching", [True, False])
def test_the_asyncio_api_never_blocks_the_event_loop(small_onnx, photos, crops, batching):
    """apredict/aembed/ainfer answer as the sync calls do, and while they run the event loop keeps
    ticking: a 10 ms heartbeat stalls for less than half of what the same work stalls it when done
    in the loop (measured here as the control, so the bound can fail: 24 photos, decode and inference,
    several hundred ms against the heartbeat's few ms)."""
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"], batching=batching) as engine:
        want = engine.predict(photos[0], topk=3)
        want_emb = engine.embed(photos[:3])
        gaps = []

        async def heartbeat(stop):
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        many_photos = list(photos[:6]) * 4
        while True:  # enough work that doing it in the loop stalls it for 0.3 s or more on this machine
            t0 = time.perf_counter()
            engine.embed(many_photos)
            if time.perf_counter() - t0 >= 0.3:
                break
            many_photos *= 2

        async def main(blocking: bool):
            stop = asyncio.Event()
            beat = asyncio.create_task(heartbeat(stop))
            await asyncio.sleep(0.05)  # the heartbeat is ticking
            if blocking:  # the control: the same work in the loop's own thread
                engine.embed(many_photos)
                await asyncio.sleep(0.05)
                stop.set()
                await beat
                return None
            top = await engine.apredict(photos[0], topk=3)
            emb = await engine.aembed(photos[:3])
            raw = await engine.ainfer(crops[:2])
            many = await asyncio.gather(*(engine.apredict(p, topk=1) for p in photos[:6]))
            await engine.aembed(many_photos)
            stop.set()
            await beat
            return top, emb, raw, many

        asyncio.run(main(blocking=True))
        stalled, gaps[:] = max(gaps), []
        top, emb, raw, many = asyncio.run(main(blocking=False))
        assert [p.index for p in top] == [p.index for p in want]
        np.testing.assert_allclose(emb, want_emb, rtol=0, atol=1e-4 * np.abs(want_emb).max())
        assert raw["logits"].shape == (2, 1000) and len(many) == 6
        assert stalled > 0.25, stalled  # the control did stall the loop: the bound below means something
        assert max(gaps) < 0.5 * stalled, (max(gaps), stalled)


def test_a_cancelled_apredict_leaves_the_queue(small_onnx, photos):
    gate = threading.Event()
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"], batching=True, max_queue=8) as engine:
        real = engine._batcher.run_batch
        engine._batcher.run_batch = lambda b: (gate.wait(10), real(b))[1]  # hold the backend busy

        async def main():
            first = asyncio.create_task(engine.aembed(photos[0]))
            await asyncio.sleep(0.2)  # running, held
            second = asyncio.create_task(engine.aembed(photos[1]))
            await asyncio.sleep(0.2)  # queued
            assert engine._batcher.queued == 1
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            await asyncio.sleep(0.05)
            assert engine._batcher.queued == 0
            with pytest.raises(Overloaded, match="waited 100 ms"):
                await engine.aembed(photos[2], timeout_ms=100)
            gate.set()
            return await first

        assert asyncio.run(main()).shape == (64,)
        assert engine._batcher.images == 1  # the cancelled and the timed-out ones never ran
