"""Progress bars for work over about a second (tqdm when installed, on stderr; nothing when disabled).

``progress(items)`` counts a loop; ``busy(desc)`` is for one long call that has no loop to count (a conversion, a
profile, a reduction): it shows the description and the time elapsed, ticking, and clears itself at the end.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                    disable=None, mininterval=0.5)


@contextlib.contextmanager
def busy(desc: str, *, enabled: bool = True, tick_s: float = 0.5) -> Iterator[None]:
    """``with busy("converting to ncnn"): ...`` shows ``converting to ncnn … 3s`` on a terminal's stderr while the
    block runs (nothing when disabled, when stderr is not a terminal, or without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    bar = None if tqdm is None or not enabled else tqdm(
        total=None, desc=desc, file=sys.stderr, leave=False, disable=None, bar_format="{desc} … {elapsed}")
    if bar is None or bar.disable:
        yield
        return
    done = threading.Event()

    def tick():
        while not done.wait(tick_s):
            bar.refresh()

    thread = threading.Thread(target=tick, name="bushu-busy", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()
