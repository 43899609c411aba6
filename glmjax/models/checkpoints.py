"""Checkpoint I/O: published checkpoint folders -> NNX state, and glmjax's own orbax format.

Reading a Hugging Face snapshot folder:

* ``model.safetensors``, or sharded ``model-0000x-of-0000y.safetensors`` with
  ``model.safetensors.index.json``;
* ``pytorch_model.bin`` only through ``torch.load(weights_only=True)`` (no code execution);
* anything else pickle-based (``.ckpt``, ``.joblib``) only with ``trust_pickle=True``.

A family's ``convert_hf(src, config)`` takes tensors from a :class:`TensorSource` (which records
what was used and names a missing key in its error) and returns flat NNX parameter paths; then
:func:`fill_module` checks that every parameter of the module is filled with the right shape.

glmjax's own format (what ``glmjax models convert`` and training write) is a folder with
``glmjax_model.json`` (family, config, provenance) and ``state/`` (an orbax PyTree checkpoint of
the NNX parameter state).
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from glmjax.errors import CheckpointError

GLMJAX_META = "glmjax_model.json"


class TensorSource:
    """Named tensors of a checkpoint with usage tracking.

    ``src[key]`` / ``src.take(key)`` returns a float32/int numpy array and marks the key as used;
    a missing key raises :class:`CheckpointError` naming it. :meth:`check_unused` reports keys
    that were never used (except those matching ``ignore`` patterns).
    """

    def __init__(self, tensors: dict[str, np.ndarray], origin: str = "checkpoint", shapes_only: bool = False):
        self.tensors = tensors
        self.origin = origin
        self.used: set[str] = set()
        # zero-stride views of the header shapes (no data read): converters skip checks of values
        self.shapes_only = shapes_only

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def take(self, key: str, shape: tuple[int, ...] | None = None, *alternatives: str) -> np.ndarray:
        """Return tensor ``key`` (or the first present alternative), optionally checking its shape."""
        for k in (key, *alternatives):
            if k in self.tensors:
                arr = np.asarray(self.tensors[k])
                self.used.add(k)
                if shape is not None and tuple(arr.shape) != tuple(shape):
                    raise CheckpointError(f"{self.origin}: tensor {k!r} has shape {tuple(arr.shape)}, "
                                          f"expected {tuple(shape)} for this config")
                return arr
        raise CheckpointError(f"{self.origin}: missing tensor {key!r} (is this checkpoint of the right family/config?)")

    __getitem__ = take

    def check_unused(self, ignore: Iterable[str] = ()) -> None:
        """Raise if tensors remain that no parameter used (``ignore``: regex patterns to allow)."""
        pats = [re.compile(p) for p in ignore]
        extra = sorted(k for k in self.tensors if k not in self.used and not any(p.search(k) for p in pats))
        if extra:
            more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
            raise CheckpointError(f"{self.origin}: unexpected tensor(s) {', '.join(map(repr, extra[:5]))}{more}; "
                                  "the checkpoint does not match the configured architecture")


def read_hf_tensors(path: Path, trust_pickle: bool = False) -> TensorSource:
    """Read every tensor of an HF snapshot folder (safetensors preferred) as numpy float32/int."""
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    found = _safetensors_files(path)
    if found is not None:
        files, origin = found
        for f in files:
            tensors.update(read_safetensors(f))
    elif (path / "pytorch_model.bin").exists():
        tensors = read_torch_state([path / "pytorch_model.bin"])
        origin = str(path / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{path} has no model.safetensors, safetensors index or pytorch_model.bin")
    return TensorSource(tensors, origin)


def _safetensors_files(path: Path) -> tuple[list[Path], str] | None:
    """The safetensors files of an HF snapshot folder (single file or index), or None."""
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        return [single], str(single)
    if not index.exists():
        return None
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
    for fn in files:
        if not isinstance(fn, str) or Path(fn).is_absolute() or ".." in Path(fn).parts:
            raise CheckpointError(f"{index} names shard {fn!r} outside the checkpoint folder; refusing to "
                                  "read it (a shard is a file name inside the folder)")
        if not (path / fn).exists():
            raise CheckpointError(f"{index} names shard {fn} which is missing from {path}")
    return [path / fn for fn in files], str(index)


def safetensors_headers(path: Path) -> tuple[TensorSource, int] | None:
    """The tensors of an HF snapshot's safetensors files as read-only zero-stride views with the
    shapes their headers give (no tensor data is read), and their count; None when the folder has
    no safetensors."""
    from safetensors import SafetensorError, safe_open

    found = _safetensors_files(Path(path))
    if found is None:
        return None
    files, origin = found
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                for k in st.keys():
                    shapes[k] = tuple(int(d) for d in st.get_slice(k).get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f} is not a readable safetensors file ({e})") from None
    zero = np.zeros(1, np.float32)
    fake = {k: np.lib.stride_tricks.as_strided(zero, shape=s, strides=(0,) * len(s), writeable=False)
            for k, s in shapes.items()}
    return TensorSource(fake, origin, shapes_only=True), len(shapes)


def check_params(expected: dict[tuple, tuple[int, ...]], flat: dict[tuple, Any], origin: str) -> None:
    """Raise :class:`CheckpointError` naming the first converted parameter that the model lacks,
    the first model parameter without a value, or the first shape mismatch."""
    norm = {tuple(str(p) for p in k): k for k in expected}
    given = {tuple(str(p) for p in k): v for k, v in flat.items()}
    unknown = sorted(set(given) - set(norm))
    if unknown:
        raise CheckpointError(f"{origin}: converted parameter(s) {', '.join('.'.join(u) for u in unknown[:5])} "
                              "do not exist in the model")
    missing = sorted(set(norm) - set(given))
    if missing:
        raise CheckpointError(f"{origin}: no value for model parameter(s) "
                              f"{', '.join('.'.join(m) for m in missing[:5])}")
    for key, arr in given.items():
        if tuple(np.shape(arr)) != expected[norm[key]]:
            raise CheckpointError(f"{origin}: parameter {'.'.join(key)} has shape {tuple(np.shape(arr))}, "
                                  f"the model expects {expected[norm[key]]}")


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file as numpy (bf16 through torch)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None
    except Exception as e:  # bf16 tensors need torch; fall back to it
        if "bf16" not in str(e).lower() and "bfloat16" not in str(e).lower():
            raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None
        return _read_safetensors_torch(file)
    return {k: _to_f32(v) for k, v in raw.items()}


def _read_safetensors_torch(file: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file

    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in load_file(str(file)).items()}


class _Parts(io.RawIOBase):
    """Several files read as one seekable stream (the split ``.pt.part*`` files of Evo 2 40B)."""

    def __init__(self, files: list[Path]):
        self.files = [open(f, "rb") for f in files]  # noqa: SIM115 - closed in close()
        self.sizes = [f.stat().st_size for f in files]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.starts[-1]}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view) and self.pos < self.starts[-1]:
            i = int(np.searchsorted(self.starts, self.pos, side="right") - 1)
            f = self.files[i]
            f.seek(self.pos - self.starts[i])
            n = f.readinto(view[done:done + min(len(view) - done, self.starts[i + 1] - self.pos)])
            if not n:
                break
            done += n
            self.pos += n
        return done

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


def read_torch_state(files: list[Path]) -> dict[str, np.ndarray]:
    """A torch state dict from one file (``pytorch_model.bin``, ``.pt``) or the ordered pieces of
    a split one (Evo 2's ``.pt.part*``, read as one stream, never joined on disk), through
    ``torch.load(weights_only=True)`` (never a full unpickle). Non-tensor entries (Transformer
    Engine ``_extra_state`` blobs) are left out; a ``{"model": state_dict}`` wrapper is opened."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{files[0]} is a PyTorch pickle; install torch to read it safely "
                              "(weights_only=True), or convert it to safetensors") from None
    stream = str(files[0]) if len(files) == 1 else io.BufferedReader(_Parts(files), buffer_size=1 << 22)
    try:
        sd = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for refused/garbled pickles
        raise CheckpointError(f"{files[0]} could not be loaded with weights_only=True ({type(e).__name__}); "
                              "it may contain code: convert it to safetensors from a trusted environment") from None
    finally:
        if not isinstance(stream, str):
            stream.close()
    if not isinstance(sd, dict):
        raise CheckpointError(f"{files[0]} does not hold a state dict")
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "detach"):
            continue  # e.g. Transformer Engine _extra_state blobs
        t = v.detach()
        out[k] = t.float().numpy() if t.is_floating_point() else t.numpy()
    return out


def _to_f32(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v


def read_config_json(path: Path) -> dict:
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no config.json; is it a model folder?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f} is not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# Filling a module's parameters

def _path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def param_paths(module: nnx.Module) -> dict[tuple, tuple[int, ...]]:
    """Flat ``{path: shape}`` of every nnx.Param of a module (path elements are str/int)."""
    state = nnx.state(module, nnx.Param)
    flat = nnx.to_flat_state(state) if hasattr(nnx, "to_flat_state") else state.flat_state()
    out = {}
    for path, var in flat:
        value = var.value if hasattr(var, "value") else var
        out[tuple(path)] = tuple(value.shape)
    return out


def fill_module(module: nnx.Module, flat: dict[tuple, np.ndarray], origin: str = "checkpoint") -> None:
    """Assign flat ``{path: array}`` to the module's params; every param must be given exactly once.

    Path elements may be given as str for int indices ("0" for 0). Raises CheckpointError naming
    unfilled, unknown or mis-shaped parameters.
    """
    expected = param_paths(module)
    check_params(expected, flat, origin)
    norm = {tuple(str(p) for p in k): k for k in expected}
    given = {tuple(str(p) for p in k): v for k, v in flat.items()}
    state = nnx.state(module, nnx.Param)
    for key, arr in given.items():
        path = norm[key]
        node = state
        for p in path[:-1]:
            node = node[p]
        var = node[path[-1]]
        cur = var.value if hasattr(var, "value") else var
        new = jax.numpy.asarray(arr, dtype=cur.dtype)
        if hasattr(var, "value"):
            var.value = new
        else:
            node[path[-1]] = new
    nnx.update(module, state)


# ---------------------------------------------------------------------------------------------
# glmjax's own format (orbax)

def is_glmjax_dir(path: Path) -> bool:
    return (Path(path) / GLMJAX_META).exists()


def save_glmjax(path: Path, family: str, config_dict: dict, module: nnx.Module,
                extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Save a model as ``glmjax_model.json`` + orbax ``state/`` (written to a temp dir, then renamed).
    ``overwrite`` replaces only a folder glmjax wrote; the folder is locked while it is written."""
    from glmjax.storage import OutputLock, is_own_output, remove_own_output

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another output or pass --overwrite")
    if path.exists() and not is_own_output(path):
        raise CheckpointError(f"{path} exists and is not a glmjax model folder; --overwrite only replaces glmjax's "
                              "own outputs: choose another output or remove it yourself")
    with OutputLock(path):
        return _save_glmjax(path, family, config_dict, module, extra, remove_own_output)


def _save_glmjax(path: Path, family: str, config_dict: dict, module: nnx.Module, extra: dict[str, Any] | None,
                 remove_own_output) -> Path:
    import orbax.checkpoint as ocp

    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = nnx.state(module, nnx.Param)
    pure = nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()
    pure = jax.tree_util.tree_map(lambda x: np.asarray(x), pure)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "state", pure)
    meta = {"format": "glmjax.model", "format_version": 1, "family": family, "config": config_dict,
            **(extra or {})}
    (tmp / GLMJAX_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    remove_own_output(path)
    tmp.rename(path)
    return path


def read_glmjax_meta(path: Path) -> dict:
    try:
        meta = json.loads((Path(path) / GLMJAX_META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / GLMJAX_META} is not valid JSON ({e})") from None
    if meta.get("format") != "glmjax.model":
        raise CheckpointError(f"{path / GLMJAX_META} is not a glmjax model description")
    return meta


def restore_glmjax_state(path: Path, module: nnx.Module) -> None:
    """Restore the orbax parameter state of a glmjax model folder into ``module``."""
    import orbax.checkpoint as ocp

    state = nnx.state(module, nnx.Param)
    target = nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(Path(path).absolute() / "state", target)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise CheckpointError(f"{path}: parameter state does not match the model ({str(e).splitlines()[0]})") from None
    if hasattr(nnx, "replace_by_pure_dict"):
        nnx.replace_by_pure_dict(state, restored)
    else:
        state.replace_by_pure_dict(restored)
    nnx.update(module, state)
