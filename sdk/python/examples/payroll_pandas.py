"""The payroll worker as a pandas pipeline: each chunk becomes a DataFrame, pay is computed
column-wise, and per-department totals are reported.

Rows are synthesized (employee ``row`` works ``40 + (row % 7) / 25`` hours at 25.0 an hour, so
gross pay is ``1000.0 + row % 7``), which keeps the example self-contained and its totals
checkable; a real worker reads its rows from Parquet, a database or object storage instead.
"""

import os

import numpy as np
import pandas as pd

from batchguard_worker import Batch

DEPARTMENTS = np.array(["ops", "sales", "eng"])


def load_frame(start, end):
    rows = np.arange(start, end)
    return pd.DataFrame({
        "row": rows,
        "department": DEPARTMENTS[rows % 3],
        "hours": 40.0 + (rows % 7) / 25.0,
        "rate": 25.0,
    })


def main():
    chunk_size = int(os.environ.get("EXAMPLE_CHUNK", "1000"))
    with Batch.from_env() as batch:
        for chunk in batch.chunks(chunk_size):
            frame = load_frame(chunk.start, chunk.end)
            frame["gross_pay"] = frame["hours"] * frame["rate"]
            by_department = frame.groupby("department")["gross_pay"].sum()
            batch.add_sum("gross_pay", frame["gross_pay"].sum())
            for department, pay in by_department.items():
                batch.add_sum(f"gross_pay_{department}", pay)
            batch.add_output(f"s3://payroll/{batch.run}/part-{chunk.start:08d}.parquet")
            batch.done(chunk)


if __name__ == "__main__":
    main()
