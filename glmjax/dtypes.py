"""The compute-dtype vocabulary of every command (``--dtype auto|fp32|bf16``) and the config dtype
names it stands for. Light on purpose: command modules import it before JAX is loaded."""

from __future__ import annotations

from typing import Any

from glmjax.errors import ConfigError

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
DTYPE_CHOICES = ("auto", *DTYPES)


def dtype_name(name: Any, backend: str | None = None) -> str | None:
    """The config dtype name (``float32`` / ``bfloat16``) for a ``--dtype`` word, a dtype name or a
    dtype object; ``auto`` is bf16 on GPU/TPU and fp32 on CPU (``backend``: default JAX's); None
    stays None (the caller's default)."""
    if name is None:
        return None
    if not isinstance(name, str):
        name = getattr(name, "__name__", None) or getattr(name, "name", None) or str(name)
    if name == "auto":
        import jax

        return "bfloat16" if (backend or jax.default_backend()) in ("gpu", "tpu") else "float32"
    if name in DTYPES:
        return DTYPES[name]
    if name in DTYPES.values():
        return name
    raise ConfigError(f"unknown compute dtype {name!r}; choose one of {', '.join(DTYPE_CHOICES)}")
