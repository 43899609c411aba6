"""``glmjax models``: describe and convert model checkpoints (every registered family).

* ``glmjax models info DIR [--json]``: family, objective, architecture class, parameter count,
  context length, vocabulary size, tokenizer and source of a model folder (HF snapshot, official
  NT JAX checkpoint or glmjax folder), read from its configuration only (no weights are loaded).
* ``glmjax models convert SRC_DIR --out DST_DIR [--trust-pickle]``: load a published checkpoint
  and write it in glmjax's format (orbax state + ``glmjax_model.json``), which later loads without
  any pickle.
* ``glmjax models list``: the registered families.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` command group and its subcommands."""
    models = subparsers.add_parser("models", help="describe and convert model checkpoints: info, convert, list, presets",
                                   description="Describe and convert model checkpoints.")
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", parser_class=type(models))
    sub.required = True

    p = sub.add_parser("info", help="describe a model folder (no weights are read)",
                       description="Describe a model folder: family, objective, architecture class, "
                       "parameter count, context length, vocabulary, tokenizer and source. Works on HF "
                       "snapshots, the official NT JAX checkpoint and glmjax folders; only configuration "
                       "files are read.")
    p.add_argument("model", metavar="DIR", help="model folder, or a Hugging Face Hub id ORG/NAME[@REVISION] "
                   "(its configuration files are fetched into the HF cache)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a published checkpoint to glmjax's format",
                       description="Load SRC_DIR (HF snapshot: safetensors, sharded safetensors or "
                       "pytorch_model.bin read with torch's weights_only loader; or the official NT JAX "
                       "checkpoint) and write DST_DIR in glmjax's format (orbax state + "
                       "glmjax_model.json, tokenizer files copied). The output is written under a "
                       "temporary name and renamed when complete.")
    p.add_argument("src", metavar="SRC_DIR", help="checkpoint folder")
    p.add_argument("--out", required=True, metavar="DST_DIR", help="glmjax model folder to write")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickle-based weights (e.g. the NT "
                   "JAX .joblib file): a pickle is a program, use this only for files of trusted origin")
    p.add_argument("--overwrite", action="store_true", help="replace DST_DIR if it exists")
    p.set_defaults(func=cmd_convert, io=(("src:SRC",), ("out",)))

    p = sub.add_parser("list", help="list the registered model families and their presets",
                       description="List the registered model families: objective, architecture class, "
                       "description and the names of their presets (`glmjax models presets FAMILY` "
                       "describes them).")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("presets", help="list a family's preset shapes: parameters and context length",
                       description="List the preset shapes of FAMILY (the names `glmjax train --config` "
                       "accepts): parameter count (from abstract shapes, nothing is "
                       "allocated), context length, width and layers.")
    p.add_argument("family", metavar="FAMILY", help="a family name from `glmjax models list`")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_presets)


# ---------------------------------------------------------------------------------------------

def abstract_params(spec, cfg) -> dict[tuple, tuple[int, ...]]:
    """Path -> shape of every parameter of the family's module for ``cfg`` (abstract: no memory)."""
    from flax import nnx

    from glmjax.models.checkpoints import param_paths

    return param_paths(nnx.eval_shape(lambda: spec.build(cfg, nnx.Rngs(0))))


def count_params(spec, cfg, params: dict | None = None) -> int:
    """Number of parameters of the family's module for ``cfg`` (from :func:`abstract_params`)."""
    params = abstract_params(spec, cfg) if params is None else params
    return int(sum(int(np.prod(s)) for s in params.values()))


def describe(path: str | Path) -> dict:
    """The ``models info`` record of a model folder (configuration files only)."""
    from glmjax.errors import CheckpointError
    from glmjax.models import detect
    from glmjax.models.checkpoints import is_glmjax_dir, read_config_json, read_glmjax_meta
    from glmjax.models.hub import resolve

    from_hub = not Path(path).expanduser().exists()
    path = resolve(path, weights=False)
    spec = detect(path)
    source = str(path.resolve())
    if is_glmjax_dir(path):
        meta = read_glmjax_meta(path)
        cfg = spec.config_cls.from_dict(meta["config"])
        fmt = "glmjax"
        source = meta.get("source", source)
    elif (path / "config.json").exists():
        cfg = spec.config_cls.from_hf(read_config_json(path))
        fmt = "huggingface"
    elif spec.config_dir is not None:
        cfg = spec.config_dir(path)
        fmt = f"{spec.name}-native"
    else:
        raise CheckpointError(f"{path}: the {spec.name} family cannot describe this folder without loading "
                              f"its weights; convert it with `glmjax models convert {path} --out DIR` first")
    tok = spec.tokenizer(cfg, path)
    params = abstract_params(spec, cfg)
    n_params = count_params(spec, cfg, params)
    native = spec.load_dir is not None and spec.detect_dir is not None and spec.detect_dir(path)
    weights = verify_weights(spec, cfg, path, params) if fmt == "huggingface" and not native else \
        ("orbax state (read when loaded)" if fmt == "glmjax" else "native checkpoint (checked when loaded)")
    if from_hub and weights.startswith("none"):
        weights = "on the Hub (info fetches configuration files only; checked when loaded)"
    return {
        "path": str(path.resolve()),
        "family": spec.name,
        "description": spec.description,
        "objective": spec.objective,
        "architecture_class": spec.architecture_class,
        "parameters": n_params,
        "weights": weights,
        "context_length": int(cfg.max_len),
        "vocab_size": int(cfg.vocab_size),
        "tokenizer": tok.name,
        "tokenizer_vocab_size": int(tok.vocab_size),
        "format": fmt,
        "source": source,
        "notes": spec.notes(cfg) if spec.notes is not None else [],
        "config": cfg.to_dict(),
    }


VERIFY_MAX_PARAMS = 2_000_000_000  # beyond this a converter's copies could need too much memory


def verify_weights(spec, cfg, path: Path, params: dict[tuple, tuple[int, ...]]) -> str:
    """Check an HF snapshot's tensors against the model's parameters (``params``: path -> shape)
    from the safetensors headers alone: the family's converter runs on zero-stride views of the
    header shapes (no tensor data is read); raises :class:`CheckpointError` naming the first
    missing, unexpected or mis-shaped tensor."""
    from glmjax.models.checkpoints import check_params, safetensors_headers

    hdr = safetensors_headers(path)
    if hdr is None:
        if (path / "pytorch_model.bin").exists():
            return "pytorch_model.bin (checked when loaded)"
        return "none (configuration only)"
    src, n = hdr
    if count_params(spec, cfg, params) > VERIFY_MAX_PARAMS or spec.convert_hf is None:
        return f"safetensors, {n} tensors (checked when loaded)"
    check_params(params, spec.convert_hf(src, cfg), src.origin)
    return f"safetensors, {n} tensors: names and shapes match the configuration (headers only)"


def _human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit} ({n:,})"
    return str(n)


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    rows = [("family", f"{info['family']} - {info['description']}"), ("objective", info["objective"]),
            ("architecture class", info["architecture_class"]), ("parameters", _human_count(info["parameters"])),
            ("weights", info["weights"]),
            ("context length", f"{info['context_length']} tokens"),
            ("vocab size", str(info["vocab_size"])),
            ("tokenizer", f"{info['tokenizer']} ({info['tokenizer_vocab_size']} ids)"),
            ("format", info["format"]), ("source", info["source"])]
    rows += [("note", line) for line in info["notes"]]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from glmjax import __version__
    from glmjax.errors import CheckpointError
    from glmjax.models import load, save
    from glmjax.models.checkpoints import is_glmjax_dir

    src, out = Path(args.src), Path(args.out)
    if out.exists() and not args.overwrite:
        raise CheckpointError(f"{out} already exists; choose another --out or pass --overwrite")
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        raise CheckpointError("--out must differ from SRC_DIR")
    t0 = time.perf_counter()
    model = load(src, trust_pickle=args.trust_pickle)
    fmt = "glmjax" if is_glmjax_dir(src) else ("huggingface" if (src / "config.json").exists()
                                               else f"{model.family}-native")
    extra = {"source": str(src.resolve()), "source_format": fmt, "glmjax_version": __version__,
             "parameters": model.num_params(), "fingerprint": model.fingerprint()}
    save(model, out, overwrite=args.overwrite, extra=extra)
    print(f"converted {src} ({fmt}, family {model.family}, {_human_count(model.num_params())} parameters) "
          f"-> {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def describe_presets(family: str) -> list[dict]:
    """Every preset of ``family``: name, parameters, context length, width and layers."""
    from glmjax.models import get_family

    spec = get_family(family)
    out = []
    for name in spec.config_cls.preset_names():
        cfg = spec.config_cls.preset(name)
        row = {"preset": name, "parameters": count_params(spec, cfg), "context_length": int(cfg.max_len),
               "vocab_size": int(cfg.vocab_size)}
        for key, names in (("width", ("hidden_size", "d_model", "n_embd")),
                           ("layers", ("num_layers", "num_hidden_layers", "n_layer"))):
            row[key] = next((int(getattr(cfg, n)) for n in names if hasattr(cfg, n)), None)
        out.append(row)
    return out


def cmd_presets(args: argparse.Namespace) -> int:
    from glmjax.models import get_family

    names = get_family(args.family).config_cls.preset_names()
    print(f"counting the parameters of {len(names)} {args.family} presets (abstract shapes)...", file=sys.stderr)
    rows = describe_presets(args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("preset", "parameters", "context", "width", "layers", "vocab")]
    table += [(r["preset"], _human_count(r["parameters"]), f"{r['context_length']:,}", str(r["width"] or "-"),
               str(r["layers"] or "-"), str(r["vocab_size"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from glmjax.models import families

    fams = [{"family": s.name, "objective": s.objective, "architecture_class": s.architecture_class,
             "description": s.description, "presets": list(s.config_cls.preset_names())}
            for s in families().values()]
    if args.json:
        print(json.dumps(fams, indent=2))
        return 0
    width = max((len(f["family"]) for f in fams), default=0)
    for f in fams:
        print(f"{f['family']:<{width}}  {f['objective']:<6}  {f['architecture_class']:<18}  {f['description']}")
        print(f"{'':<{width}}  presets: {', '.join(f['presets'])}")
    return 0
