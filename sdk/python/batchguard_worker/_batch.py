"""The batch a worker processes and the result it reports."""

import json
import math
import os
import signal
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

from ._guard import MemoryGuard, MemorySeen

#: Kubernetes keeps at most this much of a termination message.
MAX_MESSAGE_BYTES = 4096
TERMINATION_LOG = "/dev/termination-log"


class BatchError(Exception):
    """The environment does not describe a batch."""


class ResultTooLarge(BatchError):
    """The result would not fit in a termination message (it is never written truncated)."""


@dataclass(frozen=True)
class Chunk:
    """Records ``[start, end)`` of the batch; ``items`` in items mode."""

    start: int
    end: int
    items: Optional[Sequence[str]] = None

    def __len__(self) -> int:
        return self.end - self.start

    def slice(self, frame, offset: int = 0):
        """The rows of a pandas or Polars frame (or any sliceable) for this chunk, where row 0
        of ``frame`` is record ``offset``."""
        return frame[self.start - offset:self.end - offset]


@dataclass
class Batch:
    """One batch: its records, the progress made and the result to report."""

    run: str
    start: int
    end: int
    attempt: int = 1
    memory_limit_bytes: Optional[int] = None
    items: Optional[List[str]] = None
    termination_log: str = TERMINATION_LOG
    records: int = 0
    sums: Dict[str, float] = field(default_factory=dict)
    outputs: List[str] = field(default_factory=list)
    checkpoint: int = -1
    stopping: bool = False
    #: Set when the in-process memory guard (not a SIGTERM) is what stopped the loop.
    stopped_for_memory: Optional[MemorySeen] = None
    guard: Optional[MemoryGuard] = field(default=None, repr=False)

    def __post_init__(self):
        if self.checkpoint < 0:
            self.checkpoint = self.start

    @classmethod
    def from_env(cls, env=None, termination_log: Optional[str] = None, memory_guard: bool = True) -> "Batch":
        """Reads the batch from the variables batchguard sets on the worker container.

        Unless ``memory_guard=False`` (or ``BATCHGUARD_SDK_GUARD=off``), entering the batch
        starts the in-process memory guard at ``BATCHGUARD_MEMORY_THRESHOLD_PERCENT``."""
        env = os.environ if env is None else env

        def integer(name: str, required: bool = True) -> Optional[int]:
            value = env.get(name)
            if value is None or value == "":
                if required:
                    raise BatchError(f"{name} is not set: is this process running as a batchguard worker?")
                return None
            try:
                return int(value)
            except ValueError:
                raise BatchError(f"{name}={value!r} is not an integer") from None

        start, end = integer("BATCHGUARD_RANGE_START"), integer("BATCHGUARD_RANGE_END")
        if end < start:
            raise BatchError(f"BATCHGUARD_RANGE_END ({end}) is before BATCHGUARD_RANGE_START ({start})")
        items = None
        if env.get("BATCHGUARD_ITEMS"):
            try:
                items = json.loads(env["BATCHGUARD_ITEMS"])
            except json.JSONDecodeError as e:
                raise BatchError(f"BATCHGUARD_ITEMS is not a JSON array: {e}") from None
            if not isinstance(items, list) or len(items) != end - start:
                raise BatchError(f"BATCHGUARD_ITEMS must be a JSON array of {end - start} items")
        batch = cls(
            run=env.get("BATCHGUARD_RUN", ""),
            start=start,
            end=end,
            attempt=integer("BATCHGUARD_ATTEMPT", required=False) or 1,
            memory_limit_bytes=integer("BATCHGUARD_MEMORY_LIMIT_BYTES", required=False),
            items=items,
            termination_log=termination_log or env.get("BATCHGUARD_TERMINATION_LOG", TERMINATION_LOG),
        )
        if memory_guard:
            try:
                batch.guard = MemoryGuard.from_env(batch.stop_for_memory, env)
            except ValueError as e:
                raise BatchError(str(e)) from None
        return batch

    # --- the loop -------------------------------------------------------------------------

    def __enter__(self) -> "Batch":
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.guard is not None:
            self.guard.start()
        return self

    def _on_sigterm(self, signum, frame):
        # Only a flag: the chunk in hand finishes, the next one is not started.
        self.stopping = True

    def stop_for_memory(self, seen: MemorySeen) -> None:
        """What the memory guard calls at the threshold: a drain from within, reported as
        ``"stoppedFor": "memory"`` unless a SIGTERM came first."""
        if not self.stopping:
            self.stopped_for_memory = seen
        self.stopping = True

    def chunks(self, size: int) -> Iterator[Chunk]:
        """Chunks of at most ``size`` records from the checkpoint on; none after SIGTERM."""
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        position = self.checkpoint
        while position < self.end and not self.stopping:
            end = min(position + size, self.end)
            items = None if self.items is None else self.items[position - self.start:end - self.start]
            yield Chunk(position, end, items)
            position = end

    def done(self, chunk: Chunk) -> None:
        """Marks a chunk processed (its outputs flushed): the checkpoint moves past it. Every
        record of the chunk counts, the operator checks ``records`` against the batch; rows a
        worker filters out go into a sum of their own (``add_sum("kept", n)``)."""
        if chunk.start != self.checkpoint:
            raise BatchError(f"chunk {chunk.start}-{chunk.end} is not the next one (checkpoint {self.checkpoint})")
        self.checkpoint = chunk.end
        self.records += len(chunk)

    # --- the result -----------------------------------------------------------------------

    def add_sum(self, key: str, value: float) -> None:
        """Adds to a total that batchguard sums across all batches of the run."""
        value = float(value)
        if not math.isfinite(value):
            raise BatchError(f"sum {key!r} must be a finite number, not {value}")
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.message()

    def add_output(self, location: str) -> None:
        """Records an output location (keep them few: the whole result must fit in 4 KiB)."""
        self.outputs.append(str(location))
        try:
            self.message()
        except ResultTooLarge:
            self.outputs.pop()
            raise

    def message(self) -> str:
        """The termination message, or ResultTooLarge if it would exceed 4 KiB."""
        result = {"records": self.records, "sums": self.sums, "outputs": self.outputs}
        if self.checkpoint < self.end:
            result["resumeFrom"] = self.checkpoint
            if self.stopped_for_memory is not None:
                result["stoppedFor"] = "memory"
                result["memory"] = self.stopped_for_memory.report()
        text = json.dumps(result, separators=(",", ":"))
        size = len(text.encode())
        if size > MAX_MESSAGE_BYTES:
            raise ResultTooLarge(
                f"the result is {size} bytes, more than the {MAX_MESSAGE_BYTES} a termination message holds: "
                "report fewer outputs (for example one manifest listing the parts) or fewer sums"
            )
        return text

    def __exit__(self, kind, error, traceback) -> bool:
        if self.guard is not None:
            self.guard.stop()
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        if error is not None and self.checkpoint == self.start:
            return False  # no progress to report: the attempt simply failed
        with open(self.termination_log, "w") as log:
            log.write(self.message())
        return False
