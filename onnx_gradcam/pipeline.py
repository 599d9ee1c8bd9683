"""The staged run behind ``explain``: reading, explaining and writing overlap.

Readers (a pool of threads) decode and preprocess images ahead of the explainer; the explainer runs in the
calling thread, batch after batch, while writers (another pool) encode the finished batches' overlays and
maps. Pillow's decoders and encoders and ONNX Runtime's session runs release the GIL, so threads suffice:
the stages run at once on different cores, and nothing is pickled or copied between processes. Every queue is
bounded (reads ahead, images waiting for a batch, writes behind), so memory does not grow with the number of
images.

A batch holds images whose arrays have one shape: images of one size share a batch wherever they sit in the
input (mixed sizes are grouped, never resized). A batch the explainer refuses (ValueError) is retried image
by image, so only the bad ones fail. This module knows nothing of files or CAMs: :class:`Stages` says what
each stage does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from .runtime import default_options
from .summary import Outcome


@dataclass
class Read:
    """One image as a reader leaves it: its path, its array for the model, and whatever the writer needs
    besides (the picture, for an overlay)."""

    image: str
    array: np.ndarray
    picture: object = None


@dataclass
class Stages:
    """What is done to one image or batch; the pipeline decides only when, and in which thread.

    ``read(index)``: a :class:`Read`, or an :class:`Outcome` when there is nothing to explain (reader threads).
    ``explain(reads)``: the result for a batch, raising ValueError when the batch is refused (the calling
    thread). ``write(index, read, result, row)``: write row ``row`` of ``result``, return the outcome (writer
    threads). ``done(index, outcome)``: called once per image as it is finished, one call at a time.
    """

    read: Callable[[int], Union[Read, Outcome]]
    explain: Callable[[list[Read]], object]
    write: Callable[[int, Read, object, int], Outcome]
    done: Callable[[int, Outcome], None]


def default_workers() -> int:
    """Threads per stage: a few, since decoding and encoding a picture take a few ms against tens of ms per
    image in the session."""
    return min(4, os.cpu_count() or 1)


def session_options() -> ort.SessionOptions:
    """The project's options (:func:`~onnx_gradcam.runtime.default_options`) with ONNX Runtime's threads not
    spinning between runs: the readers and writers need those cores while the session waits for its batch."""
    options = default_options()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _yield_to_the_session() -> None:
    """Run the calling reader or writer thread at the lowest priority (Linux nice 19, this thread only).

    The session is the bottleneck and keeps every core busy; an operator split across its threads waits for
    the slowest, so a reader decoding on one of those cores stalls the whole operator. At low priority the
    readers and writers run in the session's gaps instead, and the bounded queues keep them from falling
    behind for long. On this machine's 2 cores it gained about 1% (0.863 against 0.855 of the bare session,
    medians of three interleaved rounds of 512 images, ahead in each): small, but free. Where threads have
    no priority of their own (not Linux), nothing changes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _pool(workers: int, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix=f"onnx-gradcam-{name}", initializer=_yield_to_the_session)


def run(indices: Sequence[int], stages: Stages, batch_size: int, workers: int,
        keep_going: bool) -> tuple[dict[int, Outcome], Optional[Outcome]]:
    """The outcome of each of ``indices`` finished, and the failure that stopped the run (None if none did).

    Without ``keep_going`` the first failure stops it: the images read by then are explained and written,
    the rest are left out of the outcomes (the caller says why).
    """
    staged = _Run(stages, batch_size, workers, keep_going)
    with _pool(workers, "read") as readers, staged.writers:
        reads = _read_ahead(readers, stages.read, indices, window=2 * batch_size)
        try:
            for index, read in reads:
                staged.take(index, read)
                if staged.stopped():
                    break
        finally:
            reads.close()  # reads not started are cancelled
        staged.flush()
    return staged.outcomes, staged.failure if staged.stopped() else None


def _read_ahead(pool: ThreadPoolExecutor, read: Callable, indices: Sequence[int],
                window: int) -> Iterator[tuple[int, object]]:
    """``(index, read(index))`` in input order, with up to ``window`` reads running or done ahead."""
    queued = iter(indices)
    pending: deque[tuple[int, Future]] = deque()

    def submit(count: int) -> None:
        for index in (index for _, index in zip(range(count), queued)):
            pending.append((index, pool.submit(read, index)))

    submit(window)
    try:
        while pending:
            index, future = pending.popleft()
            submit(1)
            yield index, future.result()
    finally:
        for _, future in pending:
            future.cancel()


class _Run:
    """One run's state in the calling thread: images waiting for a batch, by shape; writes in flight; the
    outcomes so far (filled from writer threads too, under a lock)."""

    def __init__(self, stages: Stages, batch_size: int, workers: int, keep_going: bool):
        self.stages, self.batch_size, self.keep_going = stages, batch_size, keep_going
        self.writers = _pool(workers, "write")
        self.max_waiting = 2 * batch_size
        self.max_writes = 2 * batch_size + workers
        self.groups: dict[tuple, list[tuple[int, Read]]] = {}
        self.writes: deque[Future] = deque()
        self.outcomes: dict[int, Outcome] = {}
        self.failure: Optional[Outcome] = None
        self._lock = threading.Lock()

    def stopped(self) -> bool:
        return not self.keep_going and self.failure is not None

    def take(self, index: int, read: Union[Read, Outcome]) -> None:
        """An image read: finished if it is an outcome, else into its shape's batch, run when full (or the
        largest batch, when too many images of mixed sizes wait)."""
        if isinstance(read, Outcome):
            self.finish(index, read)
            return
        shape = read.array.shape
        self.groups.setdefault(shape, []).append((index, read))
        if len(self.groups[shape]) == self.batch_size:
            self.explain(self.groups.pop(shape))
        elif sum(map(len, self.groups.values())) > self.max_waiting:
            self.explain(self.groups.pop(max(self.groups, key=lambda key: len(self.groups[key]))))

    def flush(self) -> None:
        """Explain every image still waiting for a batch, and wait for every write."""
        while self.groups:
            self.explain(self.groups.pop(next(iter(self.groups))))
        while self.writes:
            self.writes.popleft().result()

    def explain(self, items: list[tuple[int, Read]]) -> None:
        """Explain ``items`` as one batch and queue their writes; a refused batch is retried one by one."""
        try:
            result = self.stages.explain([read for _, read in items])
        except ValueError as error:
            if len(items) == 1:
                index, read = items[0]
                self.finish(index, Outcome(read.image, "failed", str(error)))
            else:
                for item in items:
                    self.explain([item])
            return
        for row, (index, read) in enumerate(items):
            self.writes.append(self.writers.submit(self._write, index, read, result, row))
        while self.writes and (self.writes[0].done() or len(self.writes) > self.max_writes):
            self.writes.popleft().result()  # a writer's unexpected error is raised here

    def _write(self, index: int, read: Read, result, row: int) -> None:
        self.finish(index, self.stages.write(index, read, result, row))

    def finish(self, index: int, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes[index] = outcome
            if outcome.status == "failed" and self.failure is None:
                self.failure = outcome
            self.stages.done(index, outcome)
