"""Progress of a push or pull: tqdm's bar on a terminal, a plain line per tenth otherwise (a log
keeps those readable), and the throughput at the end. Called from many transfer threads at once."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm



def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    def __init__(self, verb: str, total: int, stream: TextIO | None = None, quiet: bool = False):
        self.verb, self.total, self.stream, self.quiet = verb, total, stream or sys.stderr, quiet
        self.moved = self.skipped = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._tty = self.stream.isatty()
        self._last_tenth = 0
        self.ended: float | None = None
        self._bar = tqdm(total=total, desc=verb, unit="B", unit_scale=True, unit_divisor=1000, file=self.stream,
                         disable=quiet or not self._tty or not total, dynamic_ncols=True, leave=True)

    def add(self, n: int, skipped: bool = False) -> None:
        """n bytes done: moved over the network, or skipped (already there)."""
        with self._lock:
            if skipped:
                self.skipped += n
            else:
                self.moved += n
            self._show(n)

    def _show(self, n: int) -> None:
        if self.quiet or not self.total:
            return
        done = self.moved + self.skipped
        if self._tty:
            self._bar.update(n)
        elif (tenth := 10 * done // self.total) > self._last_tenth:
            self._last_tenth = tenth
            print(f"{self.verb}: {tenth * 10}% ({human(done)} of {human(self.total)})", file=self.stream, flush=True)

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def rate(self) -> float:
        return self.moved / max(self.seconds(), 1e-6)

    def summary(self) -> str:
        skipped = f", {human(self.skipped)} already there" if self.skipped else ""
        return (f"{human(self.moved)} in {self.seconds():.2f}s ({human(self.rate())}/s){skipped}")

    def finish(self) -> None:
        """The transfer is over (done or failed): the clock stops, a bar ends its line."""
        if self.ended is not None:
            return
        self.ended = time.monotonic()
        self._bar.close()
