"""Progress output that fits where it goes: a redrawn bar on a terminal, plain lines elsewhere.

A log file, a pipe or CI gets one line per interval (``LINE_SECONDS`` or every ``LINE_PERCENT`` % of the
total, with rate and ETA) and never a carriage return, so ``rcdm-viz quickstart > log 2>&1`` stays readable.
Every module draws its bars through ``tqdm`` from here; ``say`` prints a stage line flushed at once so that
it lands in order with the bars (both go to the same file under ``2>&1``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.std import tqdm as _tqdm

LINE_SECONDS = 30.0  # a plain line at least this often while the bar moves
LINE_PERCENT = 10  # and at each further 10 % of a known total

PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence stage lines (``say``) and bars for the rest of the process (the CLI's ``--quiet``)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def say(line: str) -> None:
    """A stage line on stdout, flushed now (unless quiet)."""
    if not _quiet:
        print(line, flush=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class tqdm(_tqdm):  # noqa: N801 - a drop-in for tqdm.tqdm, same name so call sites read the same
    """tqdm on a terminal; off a terminal, plain ``desc: n/total [elapsed<eta, rate]`` lines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _quiet:
            kwargs["disable"] = True
        stream = kwargs.get("file") or sys.stderr
        self._plain = not _is_terminal(stream)
        self._last_line = 0.0
        self._last_step = 0
        self._last_n = -1  # no line written yet
        if self._plain:
            kwargs.setdefault("bar_format", PLAIN_FORMAT)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        if not self._plain:
            return super().display(msg, pos)
        if not self.disable and self._due(closing=False):
            self._write_line()
        return None

    def close(self) -> None:
        if self._plain and not self.disable and self._due(closing=True):
            self._write_line()
        self.disable = self.disable or self._plain  # the last line is written: tqdm's own close adds none
        super().close()

    def _write_line(self) -> None:
        self._last_line, self._last_n = time.monotonic(), self.n
        self._last_step = int(100 * self.n / self.total) // LINE_PERCENT if self.total else 0
        self.fp.write(self.format_meter(**self.format_dict).strip() + "\n")
        self.fp.flush()

    def _due(self, closing: bool) -> bool:
        """A plain line: the first, then every LINE_SECONDS or LINE_PERCENT %, and the last (closing)."""
        if self._last_n < 0:
            return True
        if self.n == self._last_n:
            return False
        if closing or time.monotonic() - self._last_line >= LINE_SECONDS:
            return True
        return bool(self.total) and int(100 * self.n / self.total) // LINE_PERCENT > self._last_step
