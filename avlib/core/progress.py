"""Progress as plain lines (no bar redrawn in place), so that the same text reads well in a
terminal, in a log file, and in the executed notebook that papermill streams to the terminal."""
from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """'45 s', '6 min 05 s', '2 h 03 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLines:
    """Counts finished items and logs `what: done/total unit, rate unit/s, ETA` at most every
    `every` seconds, and once more when all are done (nothing when total is 0)."""

    def __init__(self, what: str, total: int, *, unit: str = "clips", every: float = 15.0, log=print,
                 enabled: bool = True, clock=time.perf_counter):
        self.what, self.total, self.unit, self.every, self.log = what, total, unit, every, log
        self.enabled, self.clock = enabled and total > 0, clock
        self.done = 0
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.enabled and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            self.log(self.line(now))
            if self.done >= self.total:
                self.enabled = False          # the final line is written once

    def line(self, now: float | None = None) -> str:
        """The progress line as of `now`."""
        elapsed = (self.clock() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        if self.done >= self.total:
            return (f"{self.what}: {self.done}/{self.total} {self.unit} in {format_duration(elapsed)}, "
                    f"{rate:.1f} {self.unit}/s")
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (f"{self.what}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %), "
                f"{rate:.1f} {self.unit}/s, ETA {format_duration(eta) if eta == eta else '?'}")


class Heartbeat:
    """A sign of life for loops that report only when they end (a training epoch): wraps
    loaders, and logs a progress line of the one being iterated whenever `every` seconds have
    passed since the heartbeat's last line or its creation. No line at the end of a loader: the
    caller reports that."""

    def __init__(self, *, every: float = 45.0, log=print, clock=time.perf_counter):
        self.every, self.log, self.clock = every, log, clock
        self.last = clock()

    def __call__(self, items, what: str, unit: str = "batches") -> "_Beating":
        """`items` unchanged (length and attributes too), iterated with this heartbeat."""
        return _Beating(self, items, what, unit)


class _Beating:
    def __init__(self, beat: Heartbeat, items, what: str, unit: str):
        self.beat, self.items, self.what, self.unit = beat, items, what, unit

    def __len__(self) -> int:
        return len(self.items)

    def __getattr__(self, name):
        return getattr(self.items, name)          # dataset, batch_size, ... of the loader

    def __iter__(self):
        beat = self.beat
        lines = ProgressLines(self.what, len(self.items), unit=self.unit, clock=beat.clock)
        for item in self.items:
            yield item
            lines.done += 1
            now = beat.clock()
            if now - beat.last >= beat.every and lines.done < lines.total:
                beat.last = now
                beat.log(lines.line(now))
