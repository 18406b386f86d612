"""Bisection over a monotone predicate: the one search that reduce, quantize's engine check and the accuracy budget
share (a fault upstream stays visible downstream; keeping more layers in float never loses accuracy)."""

from __future__ import annotations

from collections.abc import Callable


def first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """The smallest ``i`` in ``(lo, hi]`` with ``pred(i)``, given that ``pred`` is monotone (False then True), that
    ``pred(lo)`` is False and ``pred(hi)`` True (neither is evaluated: ``lo``/``hi`` may be sentinels)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi
