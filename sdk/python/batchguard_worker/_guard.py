"""The in-process memory guard: a background thread that reads the container's own cgroup and
asks the worker loop to stop, exactly as a drain's SIGTERM does, once the working set reaches the
run's threshold. It reacts within one poll (100 ms by default), where the operator's Prometheus
guard needs seconds; that one stays as the outer line for workers without an SDK.

cgroup v1: ``memory/memory.usage_in_bytes`` minus ``total_inactive_file`` (``memory/memory.stat``),
limit ``memory/memory.limit_in_bytes``. cgroup v2: ``memory.current`` minus ``inactive_file``
(``memory.stat``), limit ``memory.max``, and ``memory.pressure`` (PSI) when present. Both give the
working set the kubelet reports and the kernel's OOM killer compares with the limit.
"""

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_INTERVAL_MS = 100
MIN_INTERVAL_MS = 10
# cgroup v1 reports "no limit" as a page-rounded 2^63 - 1.
_UNLIMITED_V1 = 1 << 62


@dataclass(frozen=True)
class Reading:
    """One look at the cgroup."""

    working_set_bytes: int
    limit_bytes: Optional[int]
    #: Microseconds in which all tasks stalled on memory (PSI ``full total``), v2 only.
    stall_total_us: Optional[int] = None


@dataclass(frozen=True)
class MemorySeen:
    """What the guard saw when it stopped the worker; reported in the termination message."""

    working_set_bytes: int
    limit_bytes: int
    pressure_percent: Optional[float] = None

    @property
    def percent(self) -> float:
        return 100.0 * self.working_set_bytes / self.limit_bytes

    def report(self) -> dict:
        seen = {"workingSetBytes": self.working_set_bytes, "limitBytes": self.limit_bytes}
        if self.pressure_percent is not None:
            seen["pressurePercent"] = round(self.pressure_percent, 2)
        return seen


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat(text: Optional[str], key: str) -> int:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _full_stall_total(text: Optional[str]) -> Optional[int]:
    for line in (text or "").splitlines():
        if line.startswith("full "):
            for field in line.split()[1:]:
                name, _, value = field.partition("=")
                if name == "total":
                    return int(value)
    return None


def read_cgroup(root: str = DEFAULT_CGROUP_ROOT) -> Optional[Reading]:
    """The container's working set and limit from its cgroup (v2 or v1), or None without one."""
    current = _read(os.path.join(root, "memory.current"))
    if current is not None:  # cgroup v2
        stat = _read(os.path.join(root, "memory.stat"))
        working_set = max(0, int(current) - _stat(stat, "inactive_file"))
        limit = (_read(os.path.join(root, "memory.max")) or "max").strip()
        pressure = _full_stall_total(_read(os.path.join(root, "memory.pressure")))
        return Reading(working_set, None if limit == "max" else int(limit), pressure)
    v1 = os.path.join(root, "memory")
    usage = _read(os.path.join(v1, "memory.usage_in_bytes"))
    if usage is not None:
        stat = _read(os.path.join(v1, "memory.stat"))
        inactive = _stat(stat, "total_inactive_file") or _stat(stat, "inactive_file")
        working_set = max(0, int(usage) - inactive)
        limit = int((_read(os.path.join(v1, "memory.limit_in_bytes")) or "0").strip() or 0)
        return Reading(working_set, limit if 0 < limit < _UNLIMITED_V1 else None)
    return None


def _positive(env: Mapping[str, str], name: str) -> Optional[float]:
    value = (env.get(name) or "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not number > 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


class MemoryGuard:
    """Polls the cgroup every ``interval`` seconds and calls ``on_stop(seen)`` once, the first
    time the working set reaches ``threshold_percent`` of the limit (or, when
    ``pressure_percent`` is set, memory stalls take that share of a poll interval)."""

    def __init__(
        self,
        threshold_percent: float,
        on_stop: Callable[[MemorySeen], None],
        limit_bytes: Optional[int] = None,
        root: str = DEFAULT_CGROUP_ROOT,
        interval: float = DEFAULT_INTERVAL_MS / 1000,
        pressure_percent: Optional[float] = None,
    ):
        if not 0 < threshold_percent < 100:
            raise ValueError(f"the memory threshold must be between 0 and 100 percent, not {threshold_percent}")
        self.threshold_percent = threshold_percent
        self.on_stop = on_stop
        self.limit_bytes = limit_bytes
        self.root = root
        self.interval = max(interval, MIN_INTERVAL_MS / 1000)
        self.pressure_percent = pressure_percent
        self.seen: Optional[MemorySeen] = None
        self._last_stall: Optional[tuple] = None
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def from_env(cls, on_stop: Callable[[MemorySeen], None], env: Mapping[str, str]) -> Optional["MemoryGuard"]:
        """The guard the environment asks for; None when it is turned off or has no threshold."""
        if (env.get("BATCHGUARD_SDK_GUARD") or "").strip().lower() in ("0", "false", "off", "no"):
            return None
        threshold = _positive(env, "BATCHGUARD_MEMORY_THRESHOLD_PERCENT")
        if threshold is None:
            return None
        limit = _positive(env, "BATCHGUARD_MEMORY_LIMIT_BYTES")
        interval = _positive(env, "BATCHGUARD_GUARD_INTERVAL_MS") or DEFAULT_INTERVAL_MS
        return cls(
            threshold,
            on_stop,
            limit_bytes=None if limit is None else int(limit),
            root=env.get("BATCHGUARD_CGROUP_ROOT") or DEFAULT_CGROUP_ROOT,
            interval=interval / 1000,
            pressure_percent=_positive(env, "BATCHGUARD_GUARD_PRESSURE_PERCENT"),
        )

    def check(self) -> Optional[MemorySeen]:
        """One poll: what the guard saw if it is time to stop (and it did not stop before)."""
        if self.seen is not None:
            return None
        reading = read_cgroup(self.root)
        if reading is None:
            return None
        # The cgroup's own limit follows an in-place resize; the environment's is the fallback
        # for a container whose cgroup shows none.
        limit = reading.limit_bytes or self.limit_bytes
        if not limit:
            return None
        stalled = self._stalled_percent(reading.stall_total_us)
        over = reading.working_set_bytes * 100 >= self.threshold_percent * limit
        pressed = self.pressure_percent is not None and stalled is not None and stalled >= self.pressure_percent
        if not (over or pressed):
            return None
        self.seen = MemorySeen(reading.working_set_bytes, limit, stalled)
        return self.seen

    def _stalled_percent(self, total_us: Optional[int]) -> Optional[float]:
        if total_us is None:
            return None
        now = time.monotonic()
        last, self._last_stall = self._last_stall, (now, total_us)
        if last is None or now <= last[0]:
            return None
        return min(100.0, max(0.0, (total_us - last[1]) / ((now - last[0]) * 1e6) * 100))

    def start(self) -> "MemoryGuard":
        self._thread = threading.Thread(target=self._run, name="batchguard-memory-guard", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                seen = self.check()
            except (OSError, ValueError):
                seen = None  # a cgroup file that cannot be read now may be readable next time
            if seen is not None:
                self.on_stop(seen)
                return
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
