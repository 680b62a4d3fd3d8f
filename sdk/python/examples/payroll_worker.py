"""A payroll worker: sums gross pay over its records, one output part per chunk.

Runs with any data source; here rows are synthesized so the example is self-contained.
"""

import os
import time

from batchguard_worker import Batch


def load_rows(start, end):
    return [{"row": i, "gross_pay": 1000.0 + i % 7} for i in range(start, end)]


def main():
    delay = float(os.environ.get("EXAMPLE_SECONDS_PER_CHUNK", "0"))
    with Batch.from_env() as batch:
        for chunk in batch.chunks(int(os.environ.get("EXAMPLE_CHUNK", "500"))):
            rows = load_rows(chunk.start, chunk.end)
            time.sleep(delay)
            batch.add_sum("gross_pay", sum(r["gross_pay"] for r in rows))
            batch.add_output(f"s3://payroll/{batch.run}/part-{chunk.start:08d}.parquet")
            batch.done(chunk)


if __name__ == "__main__":
    main()
