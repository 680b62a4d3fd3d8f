"""batchguard's worker contract for Python (pandas, Polars, plain Python) workers.

    from batchguard_worker import Batch

    with Batch.from_env() as batch:
        for chunk in batch.chunks(1000):
            df = load_rows(chunk.start, chunk.end)
            batch.add_sum("gross_pay", float(df["gross_pay"].sum()))
            batch.add_output(write_parquet(df))
            batch.done(chunk)

On SIGTERM (a drain) the chunk in hand finishes, the loop ends, and the result reports
``resumeFrom`` so that batchguard continues the rest in a new Job. The in-process memory guard
does the same from within, within 100 ms of the container's cgroup reaching the run's threshold,
and says so in the result (``"stoppedFor": "memory"``).
"""

from ._batch import Batch, BatchError, Chunk, ResultTooLarge, MAX_MESSAGE_BYTES
from ._guard import MemoryGuard, MemorySeen, read_cgroup

__all__ = [
    "Batch",
    "BatchError",
    "Chunk",
    "ResultTooLarge",
    "MAX_MESSAGE_BYTES",
    "MemoryGuard",
    "MemorySeen",
    "read_cgroup",
]
