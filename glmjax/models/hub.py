"""Model ids of the Hugging Face Hub: ``ORG/NAME[@REVISION]`` -> a snapshot folder in the HF cache.

Every command that takes a model folder also takes a Hub id. A path that exists on disk always
wins; anything else shaped like ``ORG/NAME`` (optionally ``@REVISION``: a branch, tag or commit)
is fetched with :func:`huggingface_hub.snapshot_download` into the user's Hugging Face cache
(``HF_HUB_CACHE`` / ``HF_HOME``, as every Hugging Face tool uses it), and works offline from a
filled cache (``HF_HUB_OFFLINE=1``). Only configuration, tokenizer and safetensors files are
fetched; pickle-format weights (``.bin``, ``.pt``: read here with torch's ``weights_only``
loader, never a full unpickle) are fetched only with ``trust_pickle`` (``--trust-pickle``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from glmjax.errors import CheckpointError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
# configuration, tokenizer, vocabulary and safetensors files (the Evo 2 vortex yaml included)
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.yml", "*.yaml", "*.model", "*.tiktoken"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pt.part*", "*.pth"]
_WEIGHTS = ("*.safetensors",)
_PICKLED = ("*.bin", "*.pt", "*.pt.part*", "*.pth", "*.joblib")


def parse_hub_id(model: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of a string shaped like a Hub id, else None."""
    m = HUB_ID.match(str(model))
    if m is None or str(model).startswith((".", "/", "~")):
        return None
    return m.group("repo"), m.group("rev")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _has(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(path.glob(p), None) is not None for p in patterns)


def _download(repo: str, rev: str | None, patterns: list[str]) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise CheckpointError("Hub model ids need the huggingface_hub package (pip install huggingface_hub)") from None
    offline = _offline()
    label = f"{repo}@{rev}" if rev else repo
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo, revision=rev, allow_patterns=patterns, cache_dir=cache,
                                      local_files_only=offline))
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes one clear line
        name = type(e).__name__
        if offline or name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            raise CheckpointError(f"{label}: not a model folder on disk and not in the Hugging Face cache "
                                  f"({cache or 'the default cache'}); HF_HUB_OFFLINE is set or the Hub cannot "
                                  "be reached, so fill the cache first (online: run the same command once)") from None
        if name in ("RepositoryNotFoundError", "GatedRepoError"):
            raise CheckpointError(f"{label}: not a model folder on disk, and the Hugging Face Hub has no such "
                                  "model (or it is gated/private: log in with `hf auth login`)") from None
        if name == "RevisionNotFoundError":
            raise CheckpointError(f"{label}: the Hub model has no revision {rev!r}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else name
        raise CheckpointError(f"{label}: downloading from the Hugging Face Hub failed ({name}: {first})") from None


def resolve(model: str | Path, trust_pickle: bool = False, weights: bool = True) -> Path:
    """The folder of ``model``: itself when it exists on disk, else the Hub snapshot of the id.

    ``weights=False`` fetches the configuration and tokenizer files only (``glmjax models info``).
    Raises :class:`CheckpointError` with the reason when neither works, or when the Hub model
    publishes its weights only as pickle-format files and ``trust_pickle`` is False.
    """
    path = Path(model).expanduser()
    if path.exists():
        return path
    parsed = parse_hub_id(str(model))
    if parsed is None:
        raise CheckpointError(f"{model}: no such model folder")
    repo, rev = parsed
    label = f"{repo}@{rev}" if rev else repo
    what = "configuration, tokenizer and safetensors files" if weights else "configuration and tokenizer files"
    print(f"model {label}: {'reading the Hugging Face cache' if _offline() else 'fetching from the Hugging Face Hub'} "
          f"({what})", file=sys.stderr)
    snap = _download(repo, rev, SAFE_PATTERNS if weights else [p for p in SAFE_PATTERNS if p not in _WEIGHTS])
    if weights and not _has(snap, _WEIGHTS):
        if not trust_pickle:
            if _has(snap, _PICKLED):  # an offline snapshot holds whatever was fetched before
                raise CheckpointError(f"{label}: the cached snapshot holds pickle-format weights only "
                                      f"({snap}); pass --trust-pickle to read them")
            raise CheckpointError(f"{label}: the Hub model has no safetensors weights; its weights are pickle-"
                                  "format files (.bin/.pt) or absent. Pass --trust-pickle to fetch and read "
                                  "pickle-format weights (torch's weights_only loader)")
        print(f"model {label}: no safetensors; fetching the pickle-format weights (--trust-pickle)", file=sys.stderr)
        snap = _download(repo, rev, SAFE_PATTERNS + PICKLE_PATTERNS)
    return snap
