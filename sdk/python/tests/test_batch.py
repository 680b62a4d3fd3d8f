import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchguard_worker import Batch, BatchError, ResultTooLarge

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "payroll_worker.py"


def env(tmp_path, **extra):
    base = {
        "BATCHGUARD_RUN": "payroll",
        "BATCHGUARD_RANGE_START": "1000",
        "BATCHGUARD_RANGE_END": "3000",
        "BATCHGUARD_ATTEMPT": "1",
        "BATCHGUARD_MEMORY_LIMIT_BYTES": str(2 << 30),
        "BATCHGUARD_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    base.update(extra)
    return base


def run_worker(tmp_path, **extra):
    full = dict(os.environ, PYTHONPATH=str(HERE.parent), **env(tmp_path, **extra))
    return subprocess.Popen([sys.executable, str(EXAMPLE)], env=full)


def result(tmp_path):
    return json.loads((tmp_path / "termination-log").read_text())


def test_a_whole_batch_reports_records_sums_and_outputs(tmp_path):
    worker = run_worker(tmp_path)
    assert worker.wait(timeout=30) == 0
    message = result(tmp_path)
    assert message["records"] == 2000
    assert message["sums"]["gross_pay"] == sum(1000.0 + i % 7 for i in range(1000, 3000))
    assert message["outputs"][0] == "s3://payroll/payroll/part-00001000.parquet"
    assert len(message["outputs"]) == 4
    assert "resumeFrom" not in message


def test_sigterm_finishes_the_chunk_in_hand_and_reports_resume_from(tmp_path):
    worker = run_worker(tmp_path, EXAMPLE_SECONDS_PER_CHUNK="0.5", EXAMPLE_CHUNK="200")
    time.sleep(1.2)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    message = result(tmp_path)
    done = message["records"]
    assert 0 < done < 2000 and done % 200 == 0, message
    assert message["resumeFrom"] == 1000 + done
    assert len(message["outputs"]) == done // 200


def test_items_mode_hands_out_the_batch_items(tmp_path):
    items = ["de", "fr", "es", "it", "nl"]
    batch = Batch.from_env(env(tmp_path, BATCHGUARD_RANGE_START="10", BATCHGUARD_RANGE_END="15",
                               BATCHGUARD_ITEMS=json.dumps(items)))
    chunks = list(batch.chunks(2))
    assert [c.items for c in chunks] == [["de", "fr"], ["es", "it"], ["nl"]]
    assert [(c.start, c.end) for c in chunks] == [(10, 12), (12, 14), (14, 15)]


def test_an_error_after_progress_keeps_the_finished_chunks(tmp_path):
    with pytest.raises(RuntimeError):
        with Batch.from_env(env(tmp_path)) as batch:
            for chunk in batch.chunks(500):
                if chunk.start == 2000:
                    raise RuntimeError("source went away")
                batch.done(chunk)
    assert result(tmp_path) == {"records": 1000, "sums": {}, "outputs": [], "resumeFrom": 2000}


def test_an_error_without_progress_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with Batch.from_env(env(tmp_path)):
            raise RuntimeError("bad credentials")
    assert not (tmp_path / "termination-log").exists()


def test_a_result_over_4_kib_is_refused_not_truncated(tmp_path):
    batch = Batch.from_env(env(tmp_path))
    with pytest.raises(ResultTooLarge, match="more than the 4096"):
        for i in range(200):
            batch.add_output(f"s3://bucket/a-rather-long-prefix/for/outputs/part-{i:08d}.parquet")
    assert len(batch.message().encode()) <= 4096
    json.loads(batch.message())


def test_non_finite_sums_are_refused(tmp_path):
    batch = Batch.from_env(env(tmp_path))
    with pytest.raises(BatchError, match="finite"):
        batch.add_sum("x", float("nan"))


def test_missing_environment_says_what_is_wrong(tmp_path):
    with pytest.raises(BatchError, match="BATCHGUARD_RANGE_START is not set"):
        Batch.from_env({})
    with pytest.raises(BatchError, match="not an integer"):
        Batch.from_env(env(tmp_path, BATCHGUARD_RANGE_END="lots"))
    with pytest.raises(BatchError, match="JSON array of 2000 items"):
        Batch.from_env(env(tmp_path, BATCHGUARD_ITEMS='["one"]'))


def test_chunks_resume_after_the_checkpoint(tmp_path):
    batch = Batch.from_env(env(tmp_path))
    first = next(batch.chunks(300))
    batch.done(first)
    assert batch.records == 300
    assert next(batch.chunks(300)).start == 1300


def test_chunk_slices_a_frame():
    from batchguard_worker import Chunk
    rows = list(range(100))
    assert Chunk(10, 13).slice(rows) == [10, 11, 12]
    assert Chunk(110, 112).slice(rows, offset=100) == [10, 11]
