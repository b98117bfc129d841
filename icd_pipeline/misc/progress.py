"""Progress bars that read well in a log file.

On a terminal :func:`progress` is a plain tqdm bar. Under Snakemake a stage's stderr is its log
file, where tqdm's carriage-return redraws pile up (a DeepLab log was mostly such lines); there
it writes one plain line per ``every_percent`` of the total (or every ``every_seconds`` when the
total is unknown), with tqdm's own count, rate, elapsed time and ETA, and the last line when
the loop ends::

    icd epoch 3/8:  50%|#####     | 31/62 [00:12<00:12,  2.51it/s, loss=0.412]

Every stage that shows progress uses it (``grep -r "progress(" icd_pipeline``).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress(tqdm):
    """tqdm that prints whole lines at fixed steps instead of redrawing one line."""

    def __init__(self, *args, every_percent: float = 10.0, every_seconds: float = 60.0, **kwargs):
        self._every_percent = float(every_percent)
        self._every_seconds = float(every_seconds)
        self._last_line_at = time.monotonic()
        self._printed_n = None
        self._next_n = None
        self._leave_line = kwargs.get("leave", True)
        # tqdm calls display() after every update (we choose the lines); it clears the bar on
        # close with leave=False, which we never want in a file: the last line stays.
        kwargs.update(mininterval=0, miniters=1, leave=False, dynamic_ncols=False)
        # a line every few percent: the rate is the average since the start, not tqdm's
        # moving average of the last updates (which jumps between sparse lines)
        kwargs.setdefault("smoothing", 0)
        super().__init__(*args, **kwargs)

    def _due(self) -> bool:
        if self.total:
            step = max(1e-9, self.total * self._every_percent / 100.0)
            if self._next_n is None:
                self._next_n = step
            if self.n >= self.total or self.n >= self._next_n:
                self._next_n = (int(self.n / step) + 1) * step
                return True
            return False
        return time.monotonic() - self._last_line_at >= self._every_seconds

    def display(self, msg=None, pos=None):
        if msg is not None:
            return False  # tqdm clearing the bar on close: nothing to clear in a file
        if self.n == 0 or self.n == self._printed_n:
            return True  # the empty start, and a refresh of an unchanged bar
        if not self._due():
            return True
        self._write_line()
        return True

    def _write_line(self) -> None:
        self._printed_n = self.n
        self._last_line_at = time.monotonic()
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()

    def close(self):
        if not self.disable and self.n and self.n != self._printed_n:
            self._write_line()  # where the loop ended (a break, or an unknown total)
        super().close()


def progress(iterable=None, *, file=None, every_percent: float = 10.0, every_seconds: float = 60.0,
             **kwargs) -> tqdm:
    """A tqdm bar on a terminal; a :class:`LineProgress` writing lines when ``file`` (stderr by
    default) is not one. Takes tqdm's arguments (desc, total, unit, disable, leave, ...)."""
    file = sys.stderr if file is None else file
    if _isatty(file):
        return tqdm(iterable, file=file, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return LineProgress(iterable, file=file, every_percent=every_percent, every_seconds=every_seconds,
                        **kwargs)
