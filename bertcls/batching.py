"""Dynamic batching for ``bertcls.serve``: concurrent requests gathered into one prediction call, off the event loop.

A request is a list of texts (and optional pairs). The batcher waits for the first request, then for more until
``max_batch`` texts are queued or ``max_wait_ms`` has passed, and hands the whole group to ``predict`` (which runs
the one inference path, ``bertcls.predict.predict_texts``: it sorts the group's texts by length and restores their
order) on its single worker thread; each request then gets its own rows back. Requests queued while a pass runs go
into the next pass, so under load the batches fill without waiting. A request is never split: one larger than
``max_batch`` runs alone. ``max_batch=1`` turns batching off (one request per pass). No torch, no HTTP.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# (texts, text_pairs or None) -> one prediction dict per text, in input order
PredictFn = Callable[[list[str], list[str] | None], list[dict[str, Any]]]


@dataclass
class _Request:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers concurrent ``predict`` calls into batches of at most ``max_batch`` texts, waiting at most
    ``max_wait_ms`` for company, and runs them one at a time on a worker thread. Start it (``start``) inside the
    event loop that calls ``predict``; ``close`` stops it."""

    def __init__(self, predict: PredictFn, max_batch: int = 32, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be at least 0, got {max_wait_ms}")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._pending: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        # One worker: passes run one after another, and the model's own threads (capped by --threads) do the maths.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertcls-predict")
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False  # shutting down: run what is queued at once, waiting for no one
        self.batch_sizes: deque[int] = deque(maxlen=1024)  # texts per recent pass (bounded: memory stays flat)
        self.in_flight = 0  # requests taken and not yet answered (waiting or running)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    def drain_soon(self) -> None:
        """From any thread or a signal handler: stop waiting for passes to fill (the server is shutting down)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._draining = True
        self._arrived.set()

    async def close(self) -> None:
        """Stop gathering (requests still queued are answered with an error) and wait for the worker."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            _settle(self._pending.popleft().future, error=RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The prediction dicts of ``texts`` (with ``text_pairs``), computed in a batch with other callers'."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        request = _Request(list(texts), None if text_pairs is None else list(text_pairs), future)
        self._pending.append(request)
        self._arrived.set()
        self.in_flight += 1
        try:
            return await request.future
        finally:
            self.in_flight -= 1

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._run_batch(batch)

    def _queued_texts(self) -> int:
        return sum(len(r.texts) for r in self._pending)

    async def _wait_arrival(self, timeout: float | None) -> bool:
        """Wait until a request arrives (False on timeout)."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return False
        return True

    async def _next_batch(self) -> list[_Request]:
        # Only a request that found the worker idle waits for company: those queued while a pass ran have waited
        # that whole pass already, and waiting max_wait more for a batch that will not fill (fewer clients than
        # max_batch) only idles the worker.
        idle = not self._pending
        while not self._pending:
            await self._wait_arrival(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while idle and self._queued_texts() < self.max_batch and not self._draining:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait_arrival(remaining):
                break
        batch, size = [], 0
        while self._pending and (not batch or size + len(self._pending[0].texts) <= self.max_batch):
            batch.append(self._pending.popleft())
            size += len(batch[-1].texts)
        return batch

    async def _run_batch(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a caller that went away (cancelled) needs no answer
        if not live:
            return
        self.batch_sizes.append(sum(len(r.texts) for r in live))
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self._executor, self._predict_all, live)
        except Exception as e:  # one bad pass fails its own requests, never the batcher
            for r in live:
                _settle(r.future, error=e)
            return
        for r, rows in zip(live, answers, strict=True):
            _settle(r.future, rows)

    def _predict_all(self, batch: list[_Request]) -> list[list[dict[str, Any]]]:
        """On the worker thread: one ``predict`` call for the requests without pairs, one for those with them."""
        answers: list[list[dict[str, Any]]] = [[] for _ in batch]
        for with_pairs in (False, True):
            group = [i for i, r in enumerate(batch) if (r.pairs is not None) == with_pairs]
            if not group:
                continue
            texts = [t for i in group for t in batch[i].texts]
            pairs = [p for i in group for p in batch[i].pairs] if with_pairs else None
            rows = self._predict(texts, pairs)
            start = 0
            for i in group:
                answers[i] = rows[start : start + len(batch[i].texts)]
                start += len(batch[i].texts)
        return answers


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
