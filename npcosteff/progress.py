"""Progress bars that suit where the output goes.

On a terminal `progress_bar` is tqdm's bar, redrawn in place. When its stream is not a
terminal (a CI log, ``npcosteff demo > log 2>&1``, a pipe), redrawn frames would pile up as
carriage returns in one endless line, so it prints a short plain line now and then instead:
when another tenth of the total is done (at most one line every `PlainProgress.min_seconds`),
at least every `PlainProgress.max_seconds` while work goes on, and once at the end::

    sst2 finetune: 16/32 (50%), 12 s, about 12 s left, loss=0.6931
    sst2 finetune: 32/32 (100%), 24 s, loss=0.5120

`progress_bar` takes the arguments of `tqdm.tqdm` that npcosteff uses (an iterable or
`total`, `desc`, `initial`, `disable`, `leave`, `file`), and the plain bar has the methods
the package calls (`update`, `set_postfix`, `close`, iteration, ``with``).
"""

from __future__ import annotations

import sys
import time

__all__ = ["progress_bar", "PlainProgress", "is_terminal"]


def is_terminal(stream) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes, captured output)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):      # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, total=None, desc="", initial=0, disable=False, leave=True, file=None,
                 **tqdm_kwargs):
    """tqdm's bar on a terminal, a `PlainProgress` elsewhere (see the module's docstring).

    `file` is the stream written to (None: standard error, as tqdm)."""
    stream = sys.stderr if file is None else file
    if disable or is_terminal(stream):
        # tqdm's plain class: tqdm.auto would pick its notebook widget, which needs ipywidgets and
        # warns without them (a notebook's stream is no terminal: it gets PlainProgress anyway).
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable, leave=leave,
                    file=file, **tqdm_kwargs)
    return PlainProgress(iterable, total=total, desc=desc, initial=initial, leave=leave, file=stream)


class PlainProgress:
    """A progress report for logs: one plain line per tenth of the work, at most every
    `min_seconds`, at least every `max_seconds` while updates come, and one at the end.

    A bar with ``leave=False`` (an inner loop) prints only its time-based lines.
    `clock` (seconds, monotonic) is replaceable for tests.
    """

    fraction = 0.1            # a line when another tenth of the total is done ...
    min_seconds = 5.0         # ... but not more often than this,
    max_seconds = 30.0        # and at least this often while updates come

    def __init__(self, iterable=None, total=None, desc="", initial=0, leave=True, file=None,
                 clock=time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.leave = iterable, total, desc, leave
        self.file = sys.stderr if file is None else file
        self.clock = clock
        self.n = self.initial = initial
        self.postfix = ""
        self.start = self.last_time = clock()
        self.last_n = initial           # n at the last line printed
        self.closed = False

    # ------------------------------------------------------------------ tqdm's interface
    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n=1):
        self.n += n
        now = self.clock()
        since = now - self.last_time
        if since >= self.max_seconds or (self.leave and since >= self.min_seconds and self._new_tenth()):
            self._print(now)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = str(s)

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ""

    def refresh(self):
        pass

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.leave and self.n != self.last_n:
            self._print(self.clock(), final=True)

    # ------------------------------------------------------------------ lines
    def _new_tenth(self) -> bool:
        if not self.total:
            return False
        step = self.fraction * self.total
        return int(self.n / step) > int(self.last_n / step)

    def line(self, now, final=False) -> str:
        """The text of one report at time `now`."""
        elapsed = now - self.start
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            text = f"{head}{self.n}/{self.total} ({100 * self.n / self.total:.0f}%), {elapsed:.0f} s"
            done = self.n - self.initial
            if not final and 0 < done and self.n < self.total:
                text += f", about {elapsed / done * (self.total - self.n):.0f} s left"
        else:
            text = f"{head}{self.n}, {elapsed:.0f} s"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _print(self, now, final=False):
        self.file.write(self.line(now, final) + "\n")
        self.file.flush()
        self.last_time, self.last_n = now, self.n
