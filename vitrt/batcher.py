"""In-process dynamic batching: many callers' images into one backend batch (``Engine(..., batching=True)``).

    batcher = vitrt.Batcher(run_batch, max_batch=32, max_delay_ms=2, max_queue=128)
    out = batcher.submit(crops).result()          # crops: uint8 [n, H, W, 3]; out: {"logits": [n, ...], ...}

One thread feeds the backend. When it is idle, a request goes at once: a lone caller waits for nothing.
While a batch runs, requests queue; the next batch goes when it holds ``max_batch`` images or when the
oldest queued request has waited ``max_delay_ms``, whichever is first (a batch takes whole requests, in
arrival order). Each caller gets exactly its own rows, in its order. The queue holds at most
``max_queue`` images: a request that does not fit raises :class:`Overloaded` at once, and one that has
waited ``timeout_ms`` without starting raises it too. A request cancelled before it starts (its future's
``cancel()``, or a cancelled ``await``) leaves the queue, and no part of a split call cancelled before
it starts runs; a later turn given up while it waits for room (:class:`Turn`) is never queued.
``close()`` refuses new requests and drains the accepted ones. Decoding and preprocessing happen before ``submit`` (in the callers' threads), never here.
With the Engine's input given (``item``), a request of another row shape or dtype is refused at
``submit``; without it, requests of different row shapes run in separate batches. Nothing raised in the
feeding thread stops it, and no future's callback runs under its lock. The feeding thread holds the Batcher, not the
Engine (its run_batch is a weak method): an Engine dropped without ``close()`` is collected and its batcher
closed, as ``concurrent.futures`` does for an executor. A forked child's batchers refuse requests with a
clear error: the thread (and a GPU context) do not survive ``fork``, and a lock the thread held would
stay held.

Why not an existing one (read before writing this): Ray Serve's ``@serve.batch`` needs Ray and an asyncio
caller, and waits ``batch_wait_timeout_s`` for a batch to fill even when idle; the registry's small
batchers (``async-batcher``, ``aiobatcher``) are asyncio-only as well, where vitrt's callers are threads
as often as coroutines. This is one lock, one condition and one thread, with the standard library only.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

import numpy as np

from .errors import BackendError, InputError, Overloaded

#: Defaults, measured (python -m benchmarks.batcher; docs/benchmarks.md, "In-process batching"): a short
#: delay lets the requests that arrive while a batch runs meet in the next one without adding much to a
#: lone request's latency; the queue bound turns overload into Overloaded instead of an unbounded wait.
MAX_DELAY_MS = 2.0
MAX_QUEUE_BATCHES = 4  # max_queue defaults to this many full batches


class _Request:
    __slots__ = ("batch", "future", "t0", "deadline", "on_start", "later", "call")

    def __init__(self, batch: np.ndarray, timeout_ms: float | None):
        self.batch, self.future, self.t0 = batch, Future(), time.monotonic()
        self.deadline = self.t0 + timeout_ms / 1000 if timeout_ms is not None else None
        self.on_start: Callable[[], bool] | None = None  # a split call's first part: the call starts (False: gone)
        self.later: list[_Request] = []  # a split call's first part: the parts after it (they leave with it)
        self.call: Future | None = None  # a split call's part: the joined future (cancelled: no part runs)

    def given_up(self) -> bool:
        """Cancelled, itself or (a split call's part) its call: it must not run."""
        return self.future.cancelled() or (self.call is not None and self.call.cancelled())


class Turn:
    """A blocked :meth:`Batcher.submit` its caller may give up (:meth:`Batcher.abandon`): a cancelled
    coroutine's later turn, which waits for room in a pool thread. Checked and set under the batcher's
    lock, so a turn given up is never queued, and the waiting thread is woken at once."""

    __slots__ = ("gone", "future")

    def __init__(self):
        self.gone = False
        self.future: Future | None = None


class Batcher:
    def __init__(self, run_batch: Callable[[np.ndarray], dict], max_batch: int, max_delay_ms: float = MAX_DELAY_MS,
                 max_queue: int | None = None, name: str = "vitrt-batcher",
                 item: tuple[tuple[int, ...], np.dtype] | None = None):
        """``item``: the (shape, dtype) of one row every request must have (the Engine passes its input's),
        so that a request that could not join a batch fails alone at :meth:`submit`; without it, requests
        of another row shape or dtype than a batch's first run in a batch of their own."""
        for key, v, low in (("max_batch", max_batch, 1), ("max_delay_ms", max_delay_ms, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
                raise InputError(f"{key}={v!r}; expected a number >= {low}")
        max_queue = MAX_QUEUE_BATCHES * int(max_batch) if max_queue is None else max_queue
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < max_batch:
            raise InputError(f"max_queue={max_queue!r}; expected an integer >= max_batch ({max_batch})")
        self.run_batch, self.max_batch, self.max_queue = run_batch, int(max_batch), int(max_queue)
        self.item = (tuple(item[0]), np.dtype(item[1])) if item is not None else None
        self._forked_from: int | None = None  # the parent's pid, in a forked child
        _LIVE.add(self)
        self.max_delay = float(max_delay_ms) / 1000
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued = 0  # images waiting
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0  # batches run, and images in them: for tests and reports
        self.images = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- callers -------------------------------------------------------------------------------------
    def submit(self, batch: np.ndarray, timeout_ms: float | None = None, block: bool = False,
               turn: Turn | None = None) -> Future:
        """Queue ``batch`` (one request: [n, ...], n >= 1); its future resolves to the outputs of its rows.
        Larger than ``max_batch``: split into requests that run in order; the future joins them. A full
        queue raises Overloaded, or with ``block`` waits for room (a started call's later turns: :func:`run`);
        with ``turn``, CancelledError once it is given up (:meth:`abandon`), and the future is set on it
        as it is queued."""
        if self._forked_from is not None:
            raise BackendError(f"this batcher was made in process {self._forked_from} and this process (pid "
                               f"{os.getpid()}) is a fork of it: its feeding thread did not come with the fork (nor a "
                               "GPU context would); expected a new Engine(..., batching=True) made in this process")
        if not isinstance(batch, np.ndarray) or batch.ndim < 1 or len(batch) == 0:
            raise InputError(f"batch is {type(batch).__name__} {getattr(batch, 'shape', '')}; expected an array of "
                             "one or more images")
        if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float))
                                       or timeout_ms <= 0):
            raise InputError(f"timeout_ms={timeout_ms!r}; expected a positive number of milliseconds or None")
        if self.item is not None and (tuple(batch.shape[1:]), batch.dtype) != self.item:
            raise InputError(f"batch of {batch.dtype} rows of shape {tuple(batch.shape[1:])}; expected "
                             f"{self.item[1]} rows of shape {self.item[0]} (the artifact's input)")
        n = len(batch)
        if n > self.max_queue:
            raise InputError(f"a call of {n} images is larger than max_queue={self.max_queue}; expected at most "
                             "max_queue images per call (or a larger max_queue)")
        # timeout_ms bounds the wait before the call starts: its first part's; the later parts of a started
        # call run in their turn
        parts = [_Request(batch[i:i + self.max_batch], timeout_ms if i == 0 else None) for i in range(0, n, self.max_batch)]
        # all wired before the parts are queued: the thread may take the first one at once
        future = parts[0].future if len(parts) == 1 else _joined(parts)
        parts[0].later = parts[1:]
        if len(parts) > 1:  # its cancel reaches the parts one by one (callbacks): _take must not run one meanwhile
            for part in parts:
                part.call = future
        for part in parts:  # a request cancelled while queued leaves the queue at once
            part.future.add_done_callback(lambda f, r=part: self._forget(r) if f.cancelled() else None)
        with self._cv:
            while True:
                if turn is not None and turn.gone:
                    raise CancelledError()
                if self._closed:
                    raise BackendError("this batcher is closed; expected an open Engine (create a new one)")
                if self._queued + n <= self.max_queue:
                    break
                if not block:
                    raise Overloaded(f"the queue holds {self._queued} of max_queue={self.max_queue} images and this "
                                     f"call brings {n}; expected fewer concurrent requests, or a larger max_queue")
                self._cv.wait()
            self._queue.extend(parts)
            self._queued += n
            if turn is not None:
                turn.future = future
            self._cv.notify_all()
        return future

    def abandon(self, turn: Turn) -> None:
        """Give up ``turn``: a submit still waiting for room raises CancelledError now (not queued), and one
        already queued is cancelled if it has not started."""
        with self._cv:
            turn.gone = True
            self._cv.notify_all()
            future = turn.future
        if future is not None:  # outside the lock: its callbacks take it
            future.cancel()
            for part in getattr(future, "parts", ()):
                part.cancel()

    def _forget(self, request: _Request) -> None:
        with self._cv:
            try:
                self._queue.remove(request)
            except ValueError:  # already taken into a batch, or expired
                return
            self._queued -= len(request.batch)
            self._cv.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, run the accepted ones, stop the feeding thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._queued

    # --- the thread that feeds the backend --------------------------------------------------------------
    def _take(self, expired: list, taken: list) -> bool:
        """The next batch (under the lock) into ``taken``: whole requests in arrival order, at most
        max_batch images, all of one row shape and dtype; False when closed and drained. Requests past
        their timeout go to ``expired`` (the caller fails them after releasing the lock: their callbacks
        take it); each request in ``taken`` is RUNNING as soon as it is there."""
        busy_since = getattr(self, "_ran_at", None)
        while True:
            now = time.monotonic()
            expired.extend(self._expire(now))
            if self._queue:
                oldest = self._queue[0].t0
                # idle (nothing ran since this request came): at once; after a batch: wait for a full
                # batch or the oldest request's delay
                idle = busy_since is None or oldest > busy_since
                if idle or self._queued >= self.max_batch or now - oldest >= self.max_delay or self._closed:
                    break
                wait = oldest + self.max_delay - now
            elif self._closed:
                return False
            else:
                wait = None
            deadlines = [r.deadline for r in self._queue if r.deadline is not None]
            if deadlines:
                wait = max(0.0, min(deadlines) - now) if wait is None else max(0.0, min(wait, min(deadlines) - now))
            if expired:  # fail those first (outside the lock), rather than keep them waiting with the queue
                return True
            self._cv.wait(wait)
        size = 0
        while self._queue and size + len(self._queue[0].batch) <= self.max_batch:
            head = self._queue[0]
            if taken and (head.batch.shape[1:], head.batch.dtype) != (taken[0].batch.shape[1:], taken[0].batch.dtype):
                break  # rows that cannot be concatenated with this batch's go in the next one
            self._queue.popleft()
            self._queued -= len(head.batch)
            if head.given_up():
                continue
            if head.on_start is not None and not head.on_start():
                continue  # its call was cancelled just now: the call's cancel callback cancels this part
            if head.future.set_running_or_notify_cancel():  # False: cancelled
                taken.append(head)
                size += len(head.batch)
        if taken:
            self._cv.notify_all()  # room in the queue for a blocked submit
        return True

    def _expire(self, now: float) -> list[tuple[_Request, float]]:
        """Take out of the queue the requests past their timeout, (request, ms waited) each, marked running
        so that nothing else takes them, with the later parts of a split call whose first part expired
        (none of its parts runs: they are cancelled with it); and the cancelled ones. Under the lock:
        sets no result."""
        keep, expired, gone = collections.deque(), [], set()
        for r in self._queue:
            if id(r) in gone:  # a later part of an expired call
                self._queued -= len(r.batch)
            elif r.given_up():
                self._queued -= len(r.batch)
            elif r.deadline is not None and now >= r.deadline:
                self._queued -= len(r.batch)
                if r.future.set_running_or_notify_cancel():  # False: cancelled just now
                    expired.append((r, 1000 * (now - r.t0)))
                gone.update(id(p) for p in r.later)
            else:
                keep.append(r)
        if len(keep) != len(self._queue):
            self._cv.notify_all()
        self._queue = keep
        return expired

    def _fail_expired(self, expired: list) -> None:
        for r, waited in expired:
            r.future.set_exception(Overloaded(
                f"the request waited {waited:.0f} ms in the queue without starting (timeout_ms); "
                "expected fewer concurrent requests, or a longer timeout_ms"))
            for part in r.later:  # already out of the queue (_expire); the joined future's callback cancels them too
                part.future.cancel()
        expired.clear()

    def _loop(self) -> None:
        expired: list = []
        while True:
            taken: list[_Request] = []
            try:
                with self._cv:
                    more = self._take(expired, taken)
            except BaseException as exc:  # never expected; if it happens, fail what waits rather than stop
                with self._cv:
                    queued, self._queue, self._queued = list(self._queue), collections.deque(), 0
                    self._cv.notify_all()  # room: a submit blocked on the full queue goes on
                error = BackendError(f"the batcher failed to take a batch: {exc!r}")
                for r in [*taken, *queued]:  # those in expired: Overloaded below, as they would have been
                    try:  # each settled alone: one RUNNING already (taken, or marked when it failed) as it is
                        if r.future.running() or (not r.future.done() and r.future.set_running_or_notify_cancel()):
                            r.future.set_exception(error)
                    except BaseException:  # settled meanwhile (InvalidStateError): nothing left to do
                        pass
                taken, more = [], True
            self._fail_expired(expired)  # outside the lock: their callbacks (a split call's) take it
            if not more:
                return
            if not taken:
                continue
            self._ran_at = time.monotonic()
            try:  # nothing raised here stops this thread: the batch's requests learn why, the next batch runs
                batch = taken[0].batch if len(taken) == 1 else np.concatenate([r.batch for r in taken])
                out = self.run_batch(batch)
                if not isinstance(out, dict) or any(len(v) != len(batch) for v in out.values()):
                    raise BackendError(f"the backend returned {type(out).__name__} with "
                                       f"{ {k: len(v) for k, v in out.items()} if isinstance(out, dict) else '?'} rows; "
                                       f"expected a dict of outputs with {len(batch)} rows each")
            except BaseException as exc:  # the backend failed: every request of this batch learns why
                for r in taken:
                    r.future.set_exception(exc)
                continue
            finally:
                self._ran_at = time.monotonic()
            self.batches += 1
            self.images += len(batch)
            start = 0
            for r in taken:
                stop = start + len(r.batch)
                r.future.set_result({k: v[start:stop] for k, v in out.items()})
                start = stop


#: Every Batcher alive in this process, for the fork handler.
_LIVE: "weakref.WeakSet[Batcher]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked child: each batcher refuses requests (submit says why) and gets a fresh lock, since the
    parent's feeding thread, which may have held it at the fork, does not exist here."""
    for b in list(_LIVE):
        b._forked_from = b._forked_from or os.getppid()
        b._cv = threading.Condition()
        b._queue.clear()
        b._queued = 0
        b._closed = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def weak_method(method: Callable[[np.ndarray], dict]) -> Callable[[np.ndarray], dict]:
    """A run_batch that calls ``method`` without keeping its object alive (the Engine's ``_run``)."""
    ref = weakref.WeakMethod(method)

    def run(batch: np.ndarray) -> dict:
        bound = ref()
        if bound is None:
            raise BackendError("the Engine behind this batcher was garbage-collected; expected an open Engine")
        return bound(batch)

    return run


def join_outputs(outs: list[dict]) -> dict:
    """The outputs of a call's parts, in order, as one call's."""
    return outs[0] if len(outs) == 1 else {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def chunks(batch: np.ndarray, size: int) -> list[np.ndarray]:
    """``batch`` in pieces of at most ``size`` rows (one piece when it fits)."""
    return [batch[i:i + size] for i in range(0, len(batch), size)] or [batch]


def turns(batcher: "Batcher", batch: np.ndarray) -> list[np.ndarray]:
    """A call as the queue takes it: whole when it fits in max_queue, else in max_batch-sized turns."""
    return [batch] if len(batch) <= batcher.max_queue else chunks(batch, batcher.max_batch)


def run(batcher: "Batcher", batch: np.ndarray, timeout_ms: float | None = None) -> dict:
    """``batch``'s outputs through ``batcher``, as a call without batching would give them: a call larger
    than max_queue runs in max_batch-sized turns, each after the one before, the later ones waiting for
    room in the queue rather than failing (the queue's bound holds, the call still works); ``timeout_ms``
    bounds the wait before the first starts, as for any call."""
    outs = [wait(batcher.submit(part, timeout_ms, block=False) if i == 0 else batcher.submit(part, None, block=True),
                 timeout_ms if i == 0 else None) for i, part in enumerate(turns(batcher, batch))]
    return join_outputs(outs)


def wait(future: Future, timeout_ms: float | None = None) -> dict:
    """The outputs of a submitted request; with ``timeout_ms``, Overloaded once it has waited that long
    without starting (it is taken out of the queue; one that has started is waited for)."""
    if timeout_ms is None:
        return future.result()
    try:
        return future.result(timeout=timeout_ms / 1000)
    except FutureTimeout:
        if future.cancel():
            raise Overloaded(f"the request waited {timeout_ms:g} ms in the queue without starting (timeout_ms); "
                             "expected fewer concurrent requests, or a longer timeout_ms") from None
        return future.result()


def _joined(parts: list[_Request]) -> Future:
    """One future for the parts of a split request: RUNNING once its first part starts (so that a
    timeout no longer cancels it), then their outputs concatenated in order, or the first error, which
    cancels the parts that have not started. Cancelling it cancels the parts that have not started."""
    futures = [p.future for p in parts]
    joined: Future = Future()
    lock = threading.Lock()
    state = {"started": False}

    def start() -> bool:  # under the lock; False: the joined future was cancelled first
        if not state["started"]:
            state["started"] = joined.set_running_or_notify_cancel()
            if not state["started"]:
                return False
        return True

    def on_start() -> bool:  # the batcher's, before the first part starts: False, the call was cancelled
        with lock:
            return start()

    def done(f: Future) -> None:
        with lock:
            if joined.done():
                return
            error = None
            if f.cancelled():
                from concurrent.futures import CancelledError

                error = CancelledError()
            elif f.exception() is not None:
                error = f.exception()
            if error is None and not all(x.done() for x in futures):
                return
            if not start():
                return
            if error is None:
                try:
                    result = join_outputs([x.result() for x in futures])
                except BaseException as exc:
                    result, error = None, exc
            if error is None:  # set under the lock: one done() of the parts settles it
                joined.set_result(result)
                return
            joined.set_exception(error)
        for x in futures:  # outside the lock: a cancelled part's callbacks run here (done() takes the lock)
            x.cancel()

    def cancelled(f: Future) -> None:
        if f.cancelled():
            for part in futures:
                part.cancel()

    parts[0].on_start = on_start
    joined.parts = futures  # type: ignore[attr-defined]  # a started call's caller can cancel the rest
    joined.add_done_callback(cancelled)
    for f in futures:
        f.add_done_callback(done)
    return joined
