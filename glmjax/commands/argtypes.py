"""Argument types of the CLI: each rejects a bad value at parse time with a one-line error
(exit status 2), so no command starts work on a negative seed, a NaN rate or a fraction of 1.5."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = _int(text)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2^63)."""
    v = _int(text)
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2^63), not {v}")
    return v


def number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
           allow_inf: bool = False) -> Callable[[str], float]:
    """A finite float (``inf`` too when ``allow_inf``) within the given bounds."""
    def parse(text: str) -> float:
        v = _float(text)
        if math.isnan(v) or (math.isinf(v) and not (allow_inf and v > 0)):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if low is not None and (v < low or (low_open and v == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, not {v:g}")
        if high is not None and (v > high or (high_open and v == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high:g}, not {v:g}")
        return v

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
count = int_at_least(0)
positive = number(0.0, low_open=True)
non_negative = number(0.0)
fraction = number(0.0, 1.0)
open_fraction = number(0.0, 1.0, low_open=True, high_open=True)
