"""LoRA: low-rank adapters on a model's linear layers, trained with the base frozen.

:func:`apply_lora` replaces every ``nnx.Linear`` whose attribute name matches a target pattern by
a :class:`LoRALinear` (base layer + ``nnx.LoRA`` adapter, ``B`` initialised to zero so the adapted
model starts equal to the base). Adapter weights are ``nnx.LoRAParam`` variables, so training can
differentiate with respect to them alone. :func:`merge_lora` folds ``scale * A @ B`` into the base
kernels and restores plain ``nnx.Linear`` layers (the merged model scores like the adapted one).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from glmjax.errors import ConfigError


class LoRALinear(nnx.Module):
    """``y = base(x) + (alpha / rank) * (x @ A) @ B`` with ``A`` [in, r], ``B`` [r, out] (zeros at init)."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, rngs: nnx.Rngs):
        self.base = base
        self.lora = nnx.LoRA(base.in_features, rank, base.out_features, rngs=rngs)
        self.rank = rank
        self.alpha = float(alpha)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.base(x) + (self.lora(x) * self.scale).astype(x.dtype)


def _children(module: nnx.Module) -> list[tuple[tuple, nnx.Module]]:
    it = nnx.iter_modules(module) if hasattr(nnx, "iter_modules") else module.iter_modules()
    return [(tuple(p), m) for p, m in it]


def _parent_set(root: Any, path: tuple, value: Any) -> None:
    parent = root
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    last = path[-1]
    if isinstance(last, int):
        parent[last] = value
    else:
        setattr(parent, last, value)


def linear_layer_names(module: nnx.Module) -> list[str]:
    """Dotted paths of every ``nnx.Linear`` in the module (what LoRA can target)."""
    return [".".join(map(str, p)) for p, m in _children(module) if isinstance(m, nnx.Linear) and p]


def apply_lora(module: nnx.Module, targets: Sequence[str], rank: int, alpha: float | None = None,
               seed: int = 0) -> list[str]:
    """Wrap matching linear layers in place; returns the dotted paths that were adapted.

    ``targets`` are glob patterns matched against the layer's attribute name (e.g. ``q_proj``) or
    its full dotted path (e.g. ``layers.*.mlp.*``).
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    alpha = float(2 * rank if alpha is None else alpha)
    rngs = nnx.Rngs(seed)
    hits = []
    for path, m in _children(module):
        if not path or not isinstance(m, nnx.Linear):
            continue
        dotted = ".".join(map(str, path))
        name = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
        if any(fnmatch.fnmatchcase(name, t) or fnmatch.fnmatchcase(dotted, t) for t in targets):
            hits.append((path, m))
    if not hits:
        raise ConfigError(f"no linear layer matches the LoRA targets {list(targets)}; "
                          f"available: {', '.join(linear_layer_names(module)[:12])}")
    for path, m in hits:
        _parent_set(module, path, LoRALinear(m, rank, alpha, rngs))
    return [".".join(map(str, p)) for p, _ in hits]


def merge_lora(module: nnx.Module) -> int:
    """Fold every adapter into its base kernel and unwrap; returns how many layers were merged."""
    count = 0
    for path, m in _children(module):
        if isinstance(m, LoRALinear):
            delta = (m.lora.lora_a.value @ m.lora.lora_b.value) * m.scale
            m.base.kernel.value = (m.base.kernel.value + delta.astype(m.base.kernel.value.dtype))
            _parent_set(module, path, m.base)
            count += 1
    return count


def has_lora(module: nnx.Module) -> bool:
    return any(isinstance(m, LoRALinear) for _, m in _children(module))


def adapter_state(module: nnx.Module) -> dict:
    """The adapter weights alone as a nested pure dict (``nnx.LoRAParam`` variables)."""
    st = nnx.state(module, nnx.LoRAParam)
    pure = nnx.to_pure_dict(st) if hasattr(nnx, "to_pure_dict") else st.to_pure_dict()
    return jax.tree_util.tree_map(jnp.asarray, pure)
