"""The in-process memory guard against fake cgroup directories (v1 and v2)."""

import json
import time

import pytest

from batchguard_worker import Batch, BatchError, MemoryGuard, read_cgroup

MIB = 1 << 20
LIMIT = 100 * MIB
AT_85 = 85 * MIB  # exactly 85% of LIMIT


def write(path, text):
    """Replaces a file at once, as the kernel's cgroup files read: never seen half-written."""
    staged = path.with_name("." + path.name + ".new")
    staged.write_text(text)
    staged.replace(path)


class FakeCgroup:
    """A cgroup directory whose working set a test sets: usage is `working_set + cache`, with
    `cache` bytes of inactive file pages that the guard must not count."""

    def __init__(self, root, version, limit=LIMIT, cache=7 * MIB):
        self.root, self.version, self.cache = root, version, cache
        self.dir = root if version == 2 else root / "memory"
        self.dir.mkdir(parents=True, exist_ok=True)
        if version == 2:
            write(self.dir / "memory.max", "max\n" if limit is None else f"{limit}\n")
            self.stall(0)
        else:
            unlimited = 9223372036854771712
            write(self.dir / "memory.limit_in_bytes", f"{unlimited if limit is None else limit}\n")
        self.set(0)

    def set(self, working_set):
        usage = working_set + self.cache
        if self.version == 2:
            write(self.dir / "memory.stat", f"anon {working_set}\nfile {self.cache}\ninactive_file {self.cache}\n")
            write(self.dir / "memory.current", f"{usage}\n")
        else:
            write(
                self.dir / "memory.stat",
                f"cache {self.cache}\nrss {working_set}\ninactive_file {self.cache}\n"
                f"total_cache {self.cache}\ntotal_rss {working_set}\ntotal_inactive_file {self.cache}\n",
            )
            write(self.dir / "memory.usage_in_bytes", f"{usage}\n")

    def stall(self, total_us):
        write(
            self.dir / "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            f"full avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\n",
        )


def env(tmp_path, **extra):
    base = {
        "BATCHGUARD_RUN": "grow",
        "BATCHGUARD_RANGE_START": "0",
        "BATCHGUARD_RANGE_END": "100",
        "BATCHGUARD_MEMORY_LIMIT_BYTES": str(LIMIT),
        "BATCHGUARD_MEMORY_THRESHOLD_PERCENT": "85",
        "BATCHGUARD_CGROUP_ROOT": str(tmp_path / "cgroup"),
        "BATCHGUARD_GUARD_INTERVAL_MS": "10",
        "BATCHGUARD_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    base.update(extra)
    return base


def result(tmp_path):
    return json.loads((tmp_path / "termination-log").read_text())


def wait_until(condition, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.mark.parametrize("version", [1, 2])
def test_the_working_set_is_usage_minus_inactive_file(tmp_path, version):
    cgroup = FakeCgroup(tmp_path / "cgroup", version)
    cgroup.set(40 * MIB)
    reading = read_cgroup(str(tmp_path / "cgroup"))
    assert (reading.working_set_bytes, reading.limit_bytes) == (40 * MIB, LIMIT)


@pytest.mark.parametrize("version", [1, 2])
def test_an_unlimited_cgroup_has_no_limit_and_the_environment_gives_one(tmp_path, version):
    FakeCgroup(tmp_path / "cgroup", version, limit=None).set(AT_85)
    assert read_cgroup(str(tmp_path / "cgroup")).limit_bytes is None
    stops = []
    guard = MemoryGuard(85, stops.append, limit_bytes=LIMIT, root=str(tmp_path / "cgroup"))
    assert guard.check() is not None
    blind = MemoryGuard(85, stops.append, root=str(tmp_path / "cgroup"))
    assert blind.check() is None, "no limit anywhere: nothing to measure against"


def test_no_cgroup_means_no_reading(tmp_path):
    assert read_cgroup(str(tmp_path / "nothing")) is None


@pytest.mark.parametrize("version", [1, 2])
def test_the_guard_stops_at_the_threshold_and_not_a_byte_below(tmp_path, version):
    cgroup = FakeCgroup(tmp_path / "cgroup", version)
    guard = MemoryGuard(85, lambda seen: None, root=str(tmp_path / "cgroup"))
    cgroup.set(AT_85 - 1)
    assert guard.check() is None
    cgroup.set(AT_85)
    seen = guard.check()
    assert (seen.working_set_bytes, seen.limit_bytes) == (AT_85, LIMIT)
    assert seen.percent == 85.0
    assert guard.check() is None, "one stop per worker"


@pytest.mark.parametrize("version", [1, 2])
def test_the_cgroups_limit_wins_over_the_environment_so_a_resize_counts(tmp_path, version):
    # The operator grew the limit in place: the environment still says the old one.
    cgroup = FakeCgroup(tmp_path / "cgroup", version, limit=2 * LIMIT)
    cgroup.set(AT_85)
    guard = MemoryGuard(85, lambda seen: None, limit_bytes=LIMIT, root=str(tmp_path / "cgroup"))
    assert guard.check() is None
    cgroup.set(2 * AT_85)
    assert guard.check().limit_bytes == 2 * LIMIT
    unlimited = FakeCgroup(tmp_path / "other", version, limit=None)
    unlimited.set(AT_85)
    guard = MemoryGuard(85, lambda seen: None, limit_bytes=LIMIT, root=str(tmp_path / "other"))
    assert guard.check().limit_bytes == LIMIT, "without a cgroup limit the environment's counts"


def grow(tmp_path, cgroup, batch, per_chunk, chunk_size=10):
    """A worker loop that adds `per_chunk` bytes of working set with each chunk and gives the
    guard (polling every 10 ms) time to look before it finishes the chunk."""
    held = 0
    with batch:
        for chunk in batch.chunks(chunk_size):
            held += per_chunk
            cgroup.set(held)
            time.sleep(0.06)
            batch.add_sum("total", sum(range(chunk.start, chunk.end)))
            batch.done(chunk)
    return result(tmp_path)


@pytest.mark.parametrize("version", [1, 2])
def test_a_worker_crossing_the_threshold_checkpoints_with_a_memory_marker(tmp_path, version):
    cgroup = FakeCgroup(tmp_path / "cgroup", version)
    batch = Batch.from_env(env(tmp_path))
    # 20 MiB per chunk of 10 records: 100 MiB at chunk 5 (records 40-49) is the first over 85 MiB.
    message = grow(tmp_path, cgroup, batch, 20 * MIB)
    assert message["resumeFrom"] == 50, message
    assert message["records"] == 50
    assert message["sums"]["total"] == sum(range(50))
    assert message["stoppedFor"] == "memory"
    seen = message["memory"]
    assert (seen["workingSetBytes"], seen["limitBytes"]) == (100 * MIB, LIMIT)
    assert seen.get("pressurePercent") == (0.0 if version == 2 else None), "PSI is a v2 file"


@pytest.mark.parametrize("version", [1, 2])
def test_a_worker_staying_below_the_threshold_finishes_its_batch(tmp_path, version):
    cgroup = FakeCgroup(tmp_path / "cgroup", version)
    batch = Batch.from_env(env(tmp_path))
    # Ten chunks of 8 MiB: 80 MiB at the end, under 85.
    message = grow(tmp_path, cgroup, batch, 8 * MIB)
    assert message == {"records": 100, "sums": {"total": float(sum(range(100)))}, "outputs": []}


@pytest.mark.parametrize("version", [1, 2])
def test_the_guard_reacts_within_one_poll(tmp_path, version):
    cgroup = FakeCgroup(tmp_path / "cgroup", version)
    batch = Batch.from_env(env(tmp_path, BATCHGUARD_GUARD_INTERVAL_MS="100"))
    with batch:
        time.sleep(0.15)
        assert not batch.stopping
        cgroup.set(90 * MIB)
        crossed = time.monotonic()
        assert wait_until(lambda: batch.stopping)
        reaction = time.monotonic() - crossed
    assert reaction < 0.2, f"stopped {reaction * 1000:.0f} ms after the crossing"
    assert batch.stopped_for_memory.working_set_bytes == 90 * MIB


def test_a_sigterm_first_is_a_plain_drain(tmp_path):
    cgroup = FakeCgroup(tmp_path / "cgroup", 2)
    with Batch.from_env(env(tmp_path)) as batch:
        chunk = next(batch.chunks(10))
        batch._on_sigterm(15, None)
        cgroup.set(99 * MIB)
        time.sleep(0.05)
        batch.done(chunk)
    message = result(tmp_path)
    assert message["resumeFrom"] == 10
    assert "stoppedFor" not in message and "memory" not in message


def test_a_stop_during_the_last_chunk_reports_a_whole_batch(tmp_path):
    cgroup = FakeCgroup(tmp_path / "cgroup", 1)
    with Batch.from_env(env(tmp_path)) as batch:
        for chunk in batch.chunks(100):
            cgroup.set(99 * MIB)
            assert wait_until(lambda: batch.stopping)
            batch.done(chunk)
    assert result(tmp_path) == {"records": 100, "sums": {}, "outputs": []}


@pytest.mark.parametrize(
    "how",
    [{"BATCHGUARD_SDK_GUARD": "off"}, {"BATCHGUARD_SDK_GUARD": "0"}, {"BATCHGUARD_MEMORY_THRESHOLD_PERCENT": ""}, "api"],
)
def test_the_guard_can_be_turned_off(tmp_path, how):
    cgroup = FakeCgroup(tmp_path / "cgroup", 2)
    if how == "api":
        batch = Batch.from_env(env(tmp_path), memory_guard=False)
    else:
        batch = Batch.from_env(env(tmp_path, **how))
    assert batch.guard is None
    message = grow(tmp_path, cgroup, batch, 20 * MIB)
    assert message["records"] == 100 and "resumeFrom" not in message


def test_memory_stalls_stop_the_worker_when_asked_to(tmp_path):
    cgroup = FakeCgroup(tmp_path / "cgroup", 2)
    cgroup.set(10 * MIB)
    guard = MemoryGuard(85, lambda seen: None, root=str(tmp_path / "cgroup"), pressure_percent=20)
    assert guard.check() is None  # the first look only sets the baseline
    time.sleep(0.1)
    cgroup.stall(50_000)  # 50 ms of full stall in some 100 ms
    seen = guard.check()
    assert seen is not None and 20 <= seen.pressure_percent <= 60, seen
    assert seen.report()["pressurePercent"] == round(seen.pressure_percent, 2)


def test_a_bad_guard_environment_says_what_is_wrong(tmp_path):
    with pytest.raises(BatchError, match="BATCHGUARD_MEMORY_THRESHOLD_PERCENT='lots' is not a number"):
        Batch.from_env(env(tmp_path, BATCHGUARD_MEMORY_THRESHOLD_PERCENT="lots"))
    with pytest.raises(BatchError, match="between 0 and 100"):
        Batch.from_env(env(tmp_path, BATCHGUARD_MEMORY_THRESHOLD_PERCENT="150"))
