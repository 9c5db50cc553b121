"""A one-line progress bar on stderr for long sweeps (rank 0 only)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, enabled: bool, width: int = 30) -> None:
        self.total, self.enabled, self.width = total, enabled and total > 1, width
        self.done = 0
        self.start = time.monotonic()

    def update(self, label: str) -> None:
        if not self.enabled:
            return
        self.done += 1
        filled = int(self.width * self.done / self.total)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {label:<28} "
                         f"{elapsed:6.1f}s elapsed, ~{eta:5.1f}s left")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def advance(self, steps: int, label: str) -> None:
        """Count ``steps`` units of work at once; redraw at most every 0.2 s (serve calls this per iteration)."""
        if not self.enabled or steps <= 0:
            return
        self.done = min(self.total, self.done + steps - 1)
        now = time.monotonic()
        if self.done + 1 < self.total and now - getattr(self, "_drawn", 0.0) < 0.2:
            self.done += 1
            return
        self._drawn = now
        self.update(label)

    def finish(self) -> None:
        """End the bar's line if it is still open."""
        if self.enabled and self.done < self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()
