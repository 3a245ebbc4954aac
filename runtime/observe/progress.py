"""Progress of a long command: bytes (push, pull, warm: tqdm's bar on a terminal, a plain line per
tenth otherwise, so that a log stays readable, and the throughput at the end; called from many
threads at once) or phases (bake: tqdm's status line with the time so far, or a line per phase)."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterator, TextIO

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

    @contextlib.contextmanager
    def stopped_on_failure(self) -> Iterator["Progress"]:
        """The transfer in the block: a failure stops the clock and ends the bar's line."""
        try:
            yield self
        except BaseException:
            self.finish()
            raise

    def finish(self) -> None:
        """The transfer is over (done or failed): the clock stops, a bar ends its line."""
        if self.ended is not None:
            return
        self.ended = time.monotonic()
        self._bar.close()


class Phases:
    """The phase a step without a byte count is in, and how long it has been going."""

    def __init__(self, verb: str, stream: TextIO | None = None, quiet: bool = False):
        self.verb, self.stream, self.quiet = verb, stream or sys.stderr, quiet
        self.phase = ""
        self._tty = self.stream.isatty()
        self._bar = tqdm(desc=verb, bar_format="{desc}: {postfix} ({elapsed})", file=self.stream,
                         disable=quiet or not self._tty, dynamic_ncols=True, leave=True)

    def set(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.phase = phase
        if self._tty:
            self._bar.set_postfix_str(phase)
        elif not self.quiet:
            print(f"{self.verb}: {phase}", file=self.stream, flush=True)

    def tick(self) -> None:
        """The time so far, on a terminal."""
        self._bar.refresh()

    def finish(self) -> None:
        self._bar.close()
