"""The model family contract shared by every architecture.

A family registers a :class:`FamilySpec`; :func:`glmjax.models.load` returns a :class:`LoadedModel`.

Module contract (Flax NNX), for every family:

* ``module(input_ids int32 [B, L], attention_mask bool [B, L] | None) -> logits [B, L, V]``;
  logits are float32 unless the module was built with another ``dtype`` (compute dtype), and V is
  the model's output rows (may exceed the tokenizer's vocabulary, e.g. padded to a multiple of 8).
  Positions where ``attention_mask`` is False must not influence other positions' logits in
  families that have a mask (attention transformers); families without a mask (Hyena, Caduceus)
  ignore it and treat pads as input, exactly like their reference implementation.
* causal families additionally implement incremental decoding, used by extraction and exposure:
  ``module.init_cache(batch_size: int, max_len: int) -> cache`` (a pytree of arrays with the
  batch on axis 0 of every leaf, position counter included) and
  ``module.decode_step(cache, token_ids int32 [B]) -> (logits [B, V], cache)``; feeding a sequence
  one token at a time gives the same logits as the full forward pass (tested per family).

Configs are frozen dataclasses satisfying :class:`ModelConfig`: ``max_len``, ``vocab_size``,
``dtype``, ``tiny()`` (for tests), ``preset(name)`` / ``preset_names()``,
``from_hf(config_json: dict)`` and ``to_dict()/from_dict()`` (for glmjax's own checkpoints).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax.errors import ConfigError
from glmjax.tokenizers import Tokenizer


class PresetTable:
    """Presets of a config class from one table: ``_preset_table()`` maps each name (in the order
    ``glmjax models presets`` lists them) to a config or a zero-argument callable building one;
    ``PRESET_LABEL`` names the family in the error for an unknown name."""

    PRESET_LABEL = ""

    @classmethod
    def _preset_table(cls) -> dict[str, Any]:
        raise TypeError(f"{cls.__name__} has no preset table")

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        """The names :meth:`preset` accepts."""
        return tuple(cls._preset_table())

    @classmethod
    def preset(cls, name: str):
        """The config of preset ``name``; a :class:`ConfigError` listing the names otherwise."""
        table = cls._preset_table()
        if name not in table:
            raise ConfigError(f"unknown {cls.PRESET_LABEL} preset {name!r}; choose one of: {', '.join(table)}")
        value = table[name]
        return value() if callable(value) else value


@runtime_checkable
class ModelConfig(Protocol):
    """What the engine, the audit and the CLI read from any family's config.

    ``max_len``: the context in tokens (the position table, the trained window, or the default
    window of a family without a hard limit); ``vocab_size``: the rows of the embedding;
    ``dtype``: the compute dtype's name (parameters stay float32).
    """

    @property
    def max_len(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def dtype(self) -> str: ...

    @classmethod
    def tiny(cls) -> ModelConfig: ...

    @classmethod
    def preset(cls, name: str) -> ModelConfig: ...

    @classmethod
    def preset_names(cls) -> tuple[str, ...]: ...

    @classmethod
    def from_hf(cls, d: dict) -> ModelConfig: ...

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class FamilySpec:
    """Registry entry of one model family.

    Attributes:
      name: registry name (``nt``, ``llama``, ``gpt2``, ``hyenadna``, ``caduceus``, ``dnabert2``).
      objective: ``"causal"`` or ``"masked"``.
      config_cls: frozen dataclass type with ``tiny()``, ``from_hf()``, ``to_dict()``, ``from_dict()``.
      build: ``(config, rngs: nnx.Rngs) -> nnx.Module``.
      tokenizer: ``(config, path: Path | None) -> Tokenizer`` (path: checkpoint dir, for vocab files).
      detect: ``(config_json: dict) -> bool``: True if an HF ``config.json`` belongs to this family.
      convert_hf: ``(tensors: TensorSource, config) -> dict[tuple[str, ...], np.ndarray]``:
        published checkpoint tensors -> flat NNX param paths (see :mod:`glmjax.models.checkpoints`).
      description: one line for ``glmjax models info``.
      architecture_class: the audit's class: ``masked-transformer``, ``long-convolution``,
        ``state-space``, ``causal-transformer``.
      lora_targets: name patterns of the linear layers LoRA adapts by default.
      attention_mask: the module honours ``attention_mask`` (pads never influence other
        positions). False for the families that treat pads as input like their references
        (Hyena, Mamba, Caduceus, Evo): a bidirectional one is then scored without any padding.
      detect_dir / load_dir: for checkpoint folders that are not HF snapshots (e.g. the official
        NT JAX checkpoint): ``detect_dir(path) -> bool`` and
        ``load_dir(path, trust_pickle) -> (config, flat NNX params)``.
      config_dir: optional ``(path) -> config`` for such folders, read without loading weights
        (``glmjax models info`` uses it; a pickle is never opened for it).
      reject: optional ``(config_json: dict) -> str | None``: for a ``config.json`` of a published
        relative of the family that glmjax cannot audit (e.g. an encoder without its LM head),
        the one-line reason; ``detect`` stays False for it.
      notes: optional ``(config) -> list[str]``: caveats ``glmjax models info`` prints (e.g. a
        published precision glmjax does not reproduce).
      gpu_compiler_options: XLA options the family's scoring programs compile with on GPUs
        (measured per family in ``scripts/bench_forward.py``; see BENCHMARKS.md).
    """

    name: str
    objective: str
    config_cls: type
    build: Callable[[Any, nnx.Rngs], nnx.Module]
    tokenizer: Callable[[Any, Path | None], Tokenizer]
    detect: Callable[[dict], bool]
    convert_hf: Callable[[Any, Any], dict] | None = None
    description: str = ""
    architecture_class: str = ""
    lora_targets: tuple[str, ...] = ()
    attention_mask: bool = True
    detect_dir: Callable[[Path], bool] | None = None
    load_dir: Callable[[Path, bool], tuple[Any, dict]] | None = None
    config_dir: Callable[[Path], Any] | None = None
    reject: Callable[[dict], str | None] | None = None
    notes: Callable[[Any], list[str]] | None = None
    gpu_compiler_options: dict[str, Any] = field(default_factory=dict)


def matmul_precision(config: Any) -> str:
    """JAX matmul precision of a model: ``"highest"`` when it computes in float32 (GPUs otherwise
    round float32 matmul inputs to TF32, ~1e-3 relative error), else ``"default"``."""
    return "highest" if str(getattr(config, "dtype", "float32")) == "float32" else "default"


def float32_matmuls(method: Callable) -> Callable:
    """Decorator of a model's entry points (``__call__``, ``encode``, ``prefill``,
    ``decode_step``): traces the method under ``jax.default_matmul_precision`` of
    :func:`matmul_precision` of the module's config (``self.cfg`` or ``self.config``), so a
    float32 model computes float32 matmuls on every backend, whoever calls it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        cfg = getattr(self, "cfg", None) or getattr(self, "config", None)
        with jax.default_matmul_precision(matmul_precision(cfg)):
            return method(self, *args, **kwargs)

    return wrapper


class LoadedModel:
    """A model ready to score: family spec, config, tokenizer, NNX module and its split state.

    ``logits(input_ids, attention_mask=None)`` runs a jitted forward pass (fp32 output) and is the
    small surface tests and scripts use; the engine uses :attr:`graphdef` / :attr:`state` directly.
    """

    def __init__(self, spec: FamilySpec, config: Any, module: nnx.Module, tokenizer: Tokenizer,
                 source: str = ""):
        self.spec = spec
        self.config = config
        self.module = module
        self.tokenizer = tokenizer
        self.source = source
        self._fwd = None
        self._fingerprint = None

    @property
    def family(self) -> str:
        return self.spec.name

    @property
    def objective(self) -> str:
        return self.spec.objective

    @property
    def graphdef(self):
        return nnx.split(self.module)[0]

    @property
    def state(self):
        return nnx.split(self.module)[1]

    def split(self):
        """``(graphdef, state)`` of the module (``nnx.split``)."""
        return nnx.split(self.module)

    def num_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(self.module, nnx.Param))))

    def logits(self, input_ids, attention_mask=None) -> jax.Array:
        """Forward pass: int [B, L] ids (and optional bool mask) -> float32 logits [B, L, V]."""
        if self._fwd is None:
            graphdef, state = nnx.split(self.module)

            @jax.jit
            def fwd(state, ids, mask):
                m = nnx.merge(graphdef, state)
                return m(ids, mask).astype(jnp.float32)

            self._fwd = (fwd, state)
        fwd, state = self._fwd
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)
        return fwd(state, ids, mask)

    def invalidate(self) -> None:
        """Forget the cached jitted forward (call after changing parameters in place)."""
        self._fwd = None

    def fingerprint(self) -> str:
        """A short hash of the parameters (for provenance).

        Hashed once per set of parameter arrays: a model scored several times (store, canaries,
        neighbours) pays for it once, and any update that replaces a parameter rehashes."""
        import hashlib
        import weakref

        leaves = jax.tree_util.tree_leaves(nnx.state(self.module, nnx.Param))
        cached = self._fingerprint
        if cached is not None and len(cached[0]) == len(leaves) and all(
                r() is leaf for r, leaf in zip(cached[0], leaves, strict=True)):
            return cached[1]
        h = hashlib.sha256()
        h.update(self.family.encode())
        for leaf in leaves:
            h.update(np.asarray(leaf, np.float32).tobytes())
        try:  # weak references: a freed parameter can never be mistaken for a live one
            refs = [weakref.ref(leaf) for leaf in leaves]
        except TypeError:
            return h.hexdigest()[:16]
        self._fingerprint = (refs, h.hexdigest()[:16])
        return self._fingerprint[1]


def config_to_dict(cfg: Any) -> dict:
    """Default ``to_dict`` for config dataclasses (tuples become lists)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def config_from_dict(cls: type, d: dict) -> Any:
    """Default ``from_dict``: ignore unknown keys, turn lists back into tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})
