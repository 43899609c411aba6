"""One bounded cache of jitted functions, shared by the audit, the engine and training helpers.

Jitted functions are keyed by what determines their compilation (a model's graph definition, the
static shapes and options), never by parameter values, so every model of one architecture reuses
them. The cache holds at most :data:`MAX_ENTRIES` functions and drops the least recently used
(its compilations go with it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from threading import Lock
from typing import Any

MAX_ENTRIES = 128

_CACHE: OrderedDict[Hashable, Any] = OrderedDict()
_LOCK = Lock()


def cached(key: Hashable, make: Callable[[], Any]) -> Any:
    """The function stored under ``key``, made by ``make()`` (and stored) on a miss."""
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    fn = make()
    with _LOCK:
        _CACHE[key] = fn
        _CACHE.move_to_end(key)
        while len(_CACHE) > MAX_ENTRIES:
            _CACHE.popitem(last=False)
    return fn


def clear() -> None:
    """Forget every cached function."""
    with _LOCK:
        _CACHE.clear()


def size() -> int:
    """Number of cached functions."""
    return len(_CACHE)
