"""Progress of a push or pull: a redrawn bar on a terminal, a plain line per tenth otherwise, and
the throughput at the end. Called from many transfer threads at once."""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

BAR = 30


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
        self._last_draw = 0.0
        self._last_tenth = 0
        self.ended: float | None = None

    def add(self, n: int, skipped: bool = False) -> None:
        """n bytes done: moved over the network, or skipped (already there)."""
        with self._lock:
            if skipped:
                self.skipped += n
            else:
                self.moved += n
            self._show()

    def _show(self) -> None:
        if self.quiet or not self.total:
            return
        done = self.moved + self.skipped
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw < 0.1 and done < self.total:
                return
            self._last_draw = now
            filled = BAR * done // self.total
            self.stream.write(f"\r{self.verb} [{'#' * filled}{'.' * (BAR - filled)}] "
                              f"{human(done)} / {human(self.total)} {human(self.rate())}/s ")
            self.stream.flush()
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
        if self._tty and not self.quiet and self.total:
            self.stream.write("\n")
            self.stream.flush()
