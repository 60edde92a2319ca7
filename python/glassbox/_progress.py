"""Progress of long library calls (``Sae.train``): a tqdm bar when tqdm is installed (it
renders in notebooks), otherwise a plain line on stderr every 10 % or 10 seconds."""

from __future__ import annotations

import sys
import time


class Bar:
    """Called after every step with ``(step, steps, stats)``; returns None (never stops)."""

    def __init__(self, total: int, start: int, what: str) -> None:
        self.total, self.what = total, what
        try:
            from tqdm.auto import tqdm  # type: ignore[import-not-found]
        except ImportError:
            self.tqdm = None
        else:
            self.tqdm = tqdm(total=total, initial=start, desc=what)
        self.last_line = time.monotonic()
        self.last_tenth = start * 10 // max(total, 1)

    def __call__(self, step: int, steps: int, stats: dict) -> None:
        summary = f"FVE {stats['fve']:.3f} L0 {stats['l0']:.1f} dead {100 * stats['dead_fraction']:.1f}%"
        if self.tqdm is not None:
            self.tqdm.n = step
            self.tqdm.set_postfix_str(summary, refresh=True)
            return
        tenth = step * 10 // max(steps, 1)
        now = time.monotonic()
        if tenth > self.last_tenth or now - self.last_line >= 10 or step == steps:
            self.last_tenth, self.last_line = tenth, now
            print(f"{self.what}: {step}/{steps} · {summary}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
