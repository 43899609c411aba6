"""Model zoo: registry of families, loading from checkpoint folders, building fresh models.

>>> model = glmjax.models.load("path/to/checkpoint")      # HF snapshot or glmjax folder
>>> model.family, model.objective, model.tokenizer.encode("ACGT"), model.logits(ids)

Families (module -> registry name): ``nt`` (Nucleotide Transformer v1/v2), ``llama`` and ``gpt2``
(causal transformer baselines), ``hyenadna``, ``caduceus`` (PH and PS), ``dnabert2``, ``mamba`` (causal Mamba v1 LM),
``evo1`` / ``evo2`` (StripedHyena 1 and 2, :mod:`glmjax.models.evo`).
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import nnx

from glmjax.dtypes import DTYPE_CHOICES, DTYPES, dtype_name  # noqa: F401  (re-exported)
from glmjax.errors import CheckpointError, ConfigError, GlmjaxError
from glmjax.models.base import FamilySpec, LoadedModel
from glmjax.models.checkpoints import (
    fill_module,
    is_glmjax_dir,
    read_config_json,
    read_glmjax_meta,
    read_hf_tensors,
    restore_glmjax_state,
)

# registry name -> module defining ``SPEC: FamilySpec`` (or ``module:ATTRIBUTE`` naming the spec)
FAMILY_MODULES = {
    "nt": "glmjax.models.nt",
    "llama": "glmjax.models.llama",
    "gpt2": "glmjax.models.gpt2",
    "hyenadna": "glmjax.models.hyena",
    "caduceus": "glmjax.models.caduceus",
    "dnabert2": "glmjax.models.dnabert2",
    "mamba": "glmjax.models.mamba",
    "evo1": "glmjax.models.evo:EVO1_SPEC",
    "evo2": "glmjax.models.evo:EVO2_SPEC",
}

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

__all__ = ["FamilySpec", "LoadedModel", "build", "families", "get_family", "load", "save"]


def families() -> dict[str, FamilySpec]:
    """All registered families, by name (families whose module is absent are left out)."""
    out = {}
    for name, target in FAMILY_MODULES.items():
        modname, _, attr = target.partition(":")
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        out[name] = getattr(mod, attr or "SPEC")
    return out


def get_family(name: str) -> FamilySpec:
    """The spec of a family by registry name; ConfigError listing the choices otherwise."""
    fams = families()
    if name not in fams:
        raise ConfigError(f"unknown model family {name!r}; choose one of: {', '.join(sorted(fams))}")
    return fams[name]


def build(family: str, config: Any = None, seed: int = 0, source: str = "") -> LoadedModel:
    """A freshly initialised model of ``family`` (``config`` defaults to the family's ``tiny()``)."""
    spec = get_family(family)
    cfg = config if config is not None else spec.config_cls.tiny()
    module = spec.build(cfg, nnx.Rngs(seed))
    return LoadedModel(spec, cfg, module, spec.tokenizer(cfg, None), source=source or f"{family}:random")


def detect(path: str | Path) -> FamilySpec:
    """The family of a checkpoint folder (glmjax folder, HF ``config.json``, or family-specific)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a model is a folder (HF snapshot or glmjax checkpoint)")
    if is_glmjax_dir(path):
        return get_family(read_glmjax_meta(path)["family"])
    fams = families()
    if (path / "config.json").exists():
        cfg = read_config_json(path)
        for spec in fams.values():
            if spec.detect(cfg):
                return spec
        for spec in fams.values():
            reason = spec.reject(cfg) if spec.reject is not None else None
            if reason:
                raise CheckpointError(f"{path}: {reason}")
        mt = cfg.get("model_type")
        raise CheckpointError(f"{path}: config.json model_type {mt!r} / architectures "
                              f"{cfg.get('architectures')} is not a supported family "
                              f"({', '.join(sorted(fams))})")
    for spec in fams.values():
        if spec.detect_dir is not None and spec.detect_dir(path):
            return spec
    raise CheckpointError(f"{path} has neither config.json nor glmjax_model.json; not a model folder")


def load(path: str | Path, trust_pickle: bool = False, dtype: Any = None) -> LoadedModel:
    """Load a model folder: a Hugging Face snapshot of a supported family, the official NT JAX
    checkpoint (``trust_pickle=True`` needed: it is a pickle), or a glmjax (orbax) folder.

    Args:
      path: the folder, or a Hugging Face Hub id ``ORG/NAME[@REVISION]`` (fetched into the HF
        cache: configuration, tokenizer and safetensors files; pickle-format weights only with
        ``trust_pickle``; offline from a filled cache with ``HF_HUB_OFFLINE=1``).
      trust_pickle: allow pickle-based weights that torch's ``weights_only`` loader cannot read.
      dtype: compute dtype for the module (``jnp.bfloat16`` on accelerators); parameters stay fp32.
    """
    from glmjax.models.hub import resolve

    path = resolve(path, trust_pickle=trust_pickle)
    spec = detect(path)
    if is_glmjax_dir(path):
        meta = read_glmjax_meta(path)
        cfg = spec.config_cls.from_dict(meta["config"])
        cfg = _with_dtype(cfg, dtype)
        module = _filled_module(spec, cfg, lambda m: restore_glmjax_state(path, m))
        return LoadedModel(spec, cfg, module, spec.tokenizer(cfg, path), source=str(path))
    native = spec.load_dir is not None and spec.detect_dir is not None and spec.detect_dir(path)
    if (path / "config.json").exists() and not native:
        cfg = spec.config_cls.from_hf(read_config_json(path))
        cfg = _with_dtype(cfg, dtype)
        src = read_hf_tensors(path, trust_pickle=trust_pickle)
        flat = spec.convert_hf(src, cfg)
    else:
        cfg, flat = spec.load_dir(path, trust_pickle)
        cfg = _with_dtype(cfg, dtype)
    module = _filled_module(spec, cfg, lambda m: fill_module(m, flat, origin=str(path)))
    return LoadedModel(spec, cfg, module, spec.tokenizer(cfg, path), source=str(path))


def _filled_module(spec: FamilySpec, cfg: Any, fill: Callable[[nnx.Module], None]) -> nnx.Module:
    """The family's module for ``cfg`` with its parameters set by ``fill(module)``.

    The module is built abstractly first (``nnx.eval_shape``): a random initialisation that the
    checkpoint overwrites anyway costs minutes and twice the memory for billions of parameters. If
    anything besides the parameters is still abstract after filling (e.g. buffers computed at
    construction), or the family cannot be traced, it is built concretely instead.
    """
    import jax

    try:
        module = nnx.eval_shape(lambda: spec.build(cfg, nnx.Rngs(0)))
    except GlmjaxError:
        raise
    except Exception:  # noqa: BLE001 - any tracing failure only means: build it concretely
        module = None
    if module is not None:
        fill(module)
        if not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(nnx.state(module))):
            return module
    module = spec.build(cfg, nnx.Rngs(0))
    fill(module)
    return module


def save(model: LoadedModel, path: str | Path, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Save a model in glmjax's folder format (orbax state + ``glmjax_model.json``)."""
    from glmjax.models.checkpoints import save_glmjax

    cfg = _with_dtype(model.config, None)
    out = save_glmjax(Path(path), model.family, cfg.to_dict(), model.module, extra=extra, overwrite=overwrite)
    # Tokenizer vocabularies travel with the model so a saved folder reloads with the same tokenizer.
    src = Path(model.source) if model.source else None
    if src is not None and src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copyfile(src / name, out / name)
    return out


def _with_dtype(cfg: Any, dtype: Any) -> Any:
    """Configs carry a ``dtype`` field (compute dtype name); replace it when asked."""
    import dataclasses

    if not hasattr(cfg, "dtype"):
        return cfg
    return dataclasses.replace(cfg, dtype=dtype_name(dtype) or "float32")
