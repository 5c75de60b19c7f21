"""``Engine``'s asyncio API: ``await engine.apredict(...)``, ``aembed``, ``ainfer``.

None of them blocks the event loop: decoding and preprocessing run in the loop's default thread pool;
inference goes to the in-process batcher (``Engine(..., batching=True)``: the loop awaits the batch's
result) or, without batching, runs in that thread pool too. Cancelling the awaiting task takes a request
that has not started out of the batcher's queue; ``timeout_ms`` raises :class:`vitrt.Overloaded` once a
request has waited that long without starting, as the synchronous calls do.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from .errors import Overloaded


class AsyncEngine:
    """Mixed into :class:`vitrt.Engine` (which provides ``_batch``, ``_check_batch``, ``_check_topk``,
    ``_batcher``, ``infer`` and ``_finish_*``)."""

    async def ainfer(self, batch: np.ndarray, timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """:meth:`Engine.infer`, awaitable."""
        loop = asyncio.get_running_loop()
        if self._batcher is None:
            self._no_timeout(timeout_ms)
            return await loop.run_in_executor(None, self.infer, batch)
        # checked off the loop: an NCHW artifact's crops are normalized here (tens of ms for a batch)
        return await self._await_batch(await loop.run_in_executor(None, self._check_batch, batch), timeout_ms)

    async def apredict(self, images: Any, topk: int = 5, timeout_ms: float | None = None):
        """:meth:`Engine.predict`, awaitable."""
        self._check_topk(topk)
        out, single = await self._arun(images, timeout_ms)
        return self._finish_predict(out, single, topk)

    async def aembed(self, images: Any, timeout_ms: float | None = None) -> np.ndarray:
        """:meth:`Engine.embed`, awaitable."""
        out, single = await self._arun(images, timeout_ms)
        return self._finish_embed(out, single)

    async def _arun(self, images: Any, timeout_ms: float | None) -> tuple[dict[str, np.ndarray], bool]:
        from .preprocess import is_single

        loop = asyncio.get_running_loop()
        single = is_single(images)
        if self._batcher is None:
            self._no_timeout(timeout_ms)
            return await loop.run_in_executor(None, lambda: self.infer(self._batch(images))), single
        # decode off the event loop, and checked as infer() checks (an NCHW artifact gets its crops normalized)
        batch = await loop.run_in_executor(None, lambda: self._check_batch(self._batch(images)))
        return await self._await_batch(batch, timeout_ms), single

    async def _await_batch(self, batch: np.ndarray, timeout_ms: float | None) -> dict[str, np.ndarray]:
        """A call larger than the queue runs in max_batch-sized turns, as Engine.infer does
        (vitrt.batcher.turns); timeout_ms bounds the wait before the first starts."""
        from .batcher import join_outputs, turns

        outs = [await self._await_one(part, timeout_ms if i == 0 else None, block=i > 0)
                for i, part in enumerate(turns(self._batcher, batch))]
        return join_outputs(outs)

    async def _await_one(self, batch: np.ndarray, timeout_ms: float | None, block: bool = False) -> dict[str, np.ndarray]:
        if block:  # a started call's later turn waits for room, in the pool: never on the event loop
            from concurrent.futures import CancelledError

            from .batcher import Turn

            turn = Turn()

            def submit():  # given up (the task cancelled): not queued, and the pool thread freed at once
                try:
                    return self._batcher.submit(batch, None, block=True, turn=turn)
                except CancelledError:
                    return None

            try:
                future = await asyncio.get_running_loop().run_in_executor(None, submit)
            except asyncio.CancelledError:
                self._batcher.abandon(turn)
                raise
        else:
            future = self._batcher.submit(batch, timeout_ms)
        waiting = asyncio.wrap_future(future)  # cancelling it cancels the request if it has not started
        try:
            if timeout_ms is None:
                return await waiting
            done, _ = await asyncio.wait({waiting}, timeout=timeout_ms / 1000)
        except asyncio.CancelledError:
            waiting.cancel()
            for part in getattr(future, "parts", ()):  # a started split call: its queued parts leave too
                part.cancel()
            raise
        if done:
            return waiting.result()
        if future.cancel():
            waiting.cancel()
            raise Overloaded(f"the request waited {timeout_ms:g} ms in the queue without starting (timeout_ms); "
                             "expected fewer concurrent requests, or a longer timeout_ms")
        return await waiting  # it started: its answer is near
