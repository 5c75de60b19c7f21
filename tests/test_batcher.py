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
    ticking (a 10 ms heartbeat never stalls for a whole inference); a cancelled apredict leaves the
    queue (with batching)."""
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

        async def main():
            stop = asyncio.Event()
            beat = asyncio.create_task(heartbeat(stop))
            top = await engine.apredict(photos[0], topk=3)
            emb = await engine.aembed(photos[:3])
            raw = await engine.ainfer(crops[:2])
            many = await asyncio.gather(*(engine.apredict(p, topk=1) for p in photos[:6]))
            stop.set()
            await beat
            return top, emb, raw, many

        top, emb, raw, many = asyncio.run(main())
        assert [p.index for p in top] == [p.index for p in want]
        np.testing.assert_allclose(emb, want_emb, rtol=0, atol=1e-4 * np.abs(want_emb).max())
        assert raw["logits"].shape == (2, 1000) and len(many) == 6
        single = time.perf_counter()
        engine.infer(crops[:1])
        one_inference = time.perf_counter() - single
        assert max(gaps) < max(0.5, 0.6 * one_inference) + 0.05, (max(gaps), one_inference)


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
