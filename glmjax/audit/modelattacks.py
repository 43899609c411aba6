"""Membership attacks that run the model again: ReCaLL (a second, prefixed scoring pass) and the
gradient-norm attack (per-sequence gradients). DC-PDD's statistic is in :mod:`glmjax.audit.dcpdd`;
its reference counts are built here from the audit's store.

ReCaLL (Xie et al., 2024, "ReCaLL: membership inference via relative conditional
log-likelihoods"), causal families with one token per nucleotide:

    recall(x) = LL(x | P) / LL(x)           (HIGHER = member)

``LL`` is the mean log-likelihood per predicted token (``mean_logp``), ``P`` a prefix of
``shots`` non-member sequences joined end to end. Conditioning on non-member context lowers a
memorised sequence's likelihood more than an unseen one's, so members have the larger ratio.
Since log p(P x) = log p(P) + log p(x | P) for a causal model, ``LL(x | P)`` is computed exactly
as ``(sum_logp(P x) - sum_logp(P)) / (n_tokens(P x) - n_tokens(P))`` from two ordinary scoring
passes (the engine's batching, no special kernel). The prefix's own sequences are not evaluated.
``LL(x)`` is floored at -1e-30 (a perfectly memorised row would divide by zero).

Gradient norm (mimir's ``gradnorm``; Maini et al., 2024): the p-norm of the gradient of the
sequence's mean token loss with respect to each parameter tensor, averaged over the tensors;
score = minus that mean (HIGHER = member: a training sequence sits near a minimum). ``p`` is
``inf`` by default, as in mimir. Causal families use the next-token loss of the nucleotide
tokens; masked families the masked-LM loss with 15 % of the nucleotide tokens replaced by the
mask token (positions drawn from the seed and the row, so reruns agree). Per-sequence gradients
come from ``jax.vmap(jax.grad(...))`` over micro-batches sized to the parameter count; the norms
are reduced on the device and only one float per sequence leaves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from glmjax.audit import dcpdd as DC
from glmjax.errors import ConfigError

RECALL_LL_FLOOR = -1e-30


# ------------------------------------------------------------------ ReCaLL


def recall_ratio(conditional_mean_logp: np.ndarray, mean_logp: np.ndarray) -> np.ndarray:
    """ReCaLL score ``LL(x|P) / LL(x)`` (float64, higher = member)."""
    c = np.asarray(conditional_mean_logp, np.float64)
    u = np.asarray(mean_logp, np.float64)
    if c.shape != u.shape:
        raise ConfigError(f"ReCaLL: {c.shape} conditional and {u.shape} plain log-likelihoods")
    if not (np.isfinite(c).all() and np.isfinite(u).all()):
        raise ConfigError("ReCaLL: NaN or infinite log-likelihoods")
    return c / np.minimum(u, RECALL_LL_FLOOR)


def recall_support(model) -> str | None:
    """Why ReCaLL cannot run on ``model`` (None when it can)."""
    if model.objective != "causal":
        return "ReCaLL conditions on a prefix: causal families only"
    if not model.tokenizer.one_token_per_nucleotide:
        return "ReCaLL needs one token per nucleotide (the prefix must not change how the sequence is tokenized)"
    return None


def recall_prefix(nonmember_seqs: list[np.ndarray], shots: int, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prefix codes, positions of the sequences used)``: ``shots`` non-member sequences drawn
    with ``seed``, joined, and cut to the last ``budget`` nucleotides (the model's context left
    over by the longest evaluated sequence)."""
    if shots < 1:
        raise ConfigError(f"ReCaLL needs at least one prefix sequence, not {shots}")
    if budget < 1:
        raise ConfigError("the model's context leaves no room for a ReCaLL prefix")
    if len(nonmember_seqs) <= shots:
        raise ConfigError(f"ReCaLL needs more than {shots} non-member sequences (have {len(nonmember_seqs)})")
    pick = np.sort(np.random.default_rng([seed, 0x9EC]).permutation(len(nonmember_seqs))[:shots])
    prefix = np.concatenate([np.asarray(nonmember_seqs[i], np.uint8) for i in pick])
    return prefix[-budget:], pick


def conditional_mean_logp(sum_px: np.ndarray, n_px: np.ndarray, sum_p: float, n_p: int) -> np.ndarray:
    """``LL(x | P)`` from the scores of ``P x`` and of ``P`` alone."""
    n = np.asarray(n_px, np.int64) - int(n_p)
    if (n < 1).any():
        raise ConfigError("ReCaLL: a prefixed sequence has no token beyond the prefix")
    return (np.asarray(sum_px, np.float64) - float(sum_p)) / n


# ------------------------------------------------------------------ DC-PDD reference


def dcpdd_table(tokenizer, rows: list[np.ndarray], n: int, source: str, chunk: int = 4096,
                on_rows: Callable[[int], None] | None = None) -> DC.NgramTable:
    """Reference n-gram counts over the scored tokens of sequences (uint8 code arrays);
    ``on_rows`` is called with the sequences done in each of the two passes (progress)."""
    if not rows:
        raise ConfigError("DC-PDD needs a non-empty reference")

    def chunks():
        for lo in range(0, len(rows), chunk):
            toks = scored_tokens(tokenizer, rows[lo:lo + chunk])
            yield toks
            if on_rows is not None:
                on_rows(len(toks))

    # two passes (the alphabet, then the counts) keep one chunk of tokens in memory at a time
    alphabet = np.unique(np.concatenate([DC.distinct_tokens(np.concatenate(c)) for c in chunks()]))
    return DC.merge_tables([DC.ngram_table(c, n, alphabet, source) for c in chunks()])


def scored_tokens(tokenizer, rows: list[np.ndarray]) -> list[np.ndarray]:
    """Per sequence, its scored token ids — the tokens the engine scores, in order."""
    from glmjax.engine.batching import tokenize_block

    if not rows:
        return []
    codes = np.concatenate([np.asarray(r, np.uint8) for r in rows])
    offs = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    tb = tokenize_block(tokenizer, codes, offs)
    return [tb.ids[a:b][tb.scored[a:b]].astype(np.int64) for a, b in zip(tb.offsets[:-1], tb.offsets[1:], strict=True)]


def dcpdd_reducer(table: DC.NgramTable, cap: float, in_reference: np.ndarray | None = None) -> Callable:
    """A token reducer (see :func:`glmjax.engine.runner.score`) giving column ``dcpdd``;
    ``in_reference``: bool per row of the scored store, True for rows whose n-grams are in
    ``table`` (left out of the counts they are scored with)."""

    def reduce(lo: int, hi: int, ids: list, logp: list) -> dict:
        leave = None if in_reference is None else np.asarray(in_reference[lo:hi], bool)
        return {"dcpdd": DC.dcpdd_scores_parallel(ids, logp, table, cap=cap, leave_out=leave)}

    return reduce


def fasta_rows(path: str | Path, window: int = 4096) -> list[np.ndarray]:
    """A public genome (FASTA or SequenceStore) as consecutive windows of ``window`` nucleotides
    (the last one shorter): the DC-PDD reference."""
    from glmjax.engine.inputs import open_input

    src = open_input(path)
    try:
        out = []
        for lo in range(0, len(src), 256):
            codes, offs = src.block(lo, min(len(src), lo + 256))
            for a, b in zip(offs[:-1], offs[1:], strict=True):
                seq = codes[a:b]
                out += [seq[i:i + window] for i in range(0, len(seq), window)]
        if not out:
            raise ConfigError(f"{path} holds no sequence")
        return out
    finally:
        src.close()


# ------------------------------------------------------------------ gradient norm


def gradnorm_support(model, max_bytes: int | None = None) -> str | None:
    """Why the gradient-norm attack cannot run on ``model`` (None when it can)."""
    if model.objective == "masked" and model.tokenizer.mask_id is None:
        return "the tokenizer has no mask token for the masked-LM loss"
    need = 3 * 4 * model.num_params()   # parameters, one gradient and headroom, float32
    limit = max_bytes if max_bytes is not None else _device_bytes()
    if limit is not None and need > limit:
        return (f"{model.num_params():,} parameters: a per-sequence gradient needs about {need / 2**30:.1f} GiB, "
                f"more than the {limit / 2**30:.1f} GiB the device offers")
    return None


def _device_bytes() -> int | None:
    from glmjax.engine.runner import device_memory_bytes

    return device_memory_bytes()


NORMS = (1.0, 2.0, math.inf)  # computed together (one compiled program serves every p)


def _norms(g: jax.Array) -> jax.Array:
    a = jnp.abs(g.astype(jnp.float32)).ravel()
    return jnp.stack([jnp.sum(a), jnp.sqrt(jnp.sum(a * a)), jnp.max(a)])


def _row_loss(graphdef, objective: str, mask_id: int | None, mask_fraction: float):
    from flax import nnx

    def loss(params, rest, ids, att, scored, key):
        ids, att, scored = ids[None], att[None], scored[None]
        model = nnx.merge(graphdef, params, rest)
        if objective == "causal":
            lp = jax.nn.log_softmax(model(ids, att)[:, :-1].astype(jnp.float32), axis=-1)
            tok = jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]
            w = scored[:, 1:].astype(jnp.float32)
        else:
            sel = (jax.random.uniform(key, ids.shape) < mask_fraction) & scored
            lp = jax.nn.log_softmax(model(jnp.where(sel, mask_id, ids).astype(ids.dtype), att).astype(jnp.float32),
                                    axis=-1)
            tok = jnp.take_along_axis(lp, ids[..., None], axis=-1)[..., 0]
            w = sel.astype(jnp.float32)
        return -jnp.sum(tok * w) / jnp.maximum(jnp.sum(w), 1.0)

    return loss


# compiled per-sequence gradient norms, shared by calls with the same model structure and options
_GRADNORM_CACHE: dict = {}


def _gradnorm_fn(graphdef, objective: str, mask_id: int | None, mask_fraction: float):
    """Jitted ``(params, rest, ids, att, scored, keys) -> [B, 3]``: per sequence, the mean over
    parameter tensors of the 1-, 2- and inf-norm of its loss gradient."""
    key = (graphdef, objective, mask_id, mask_fraction)
    fn = _GRADNORM_CACHE.get(key)
    if fn is None:
        loss = _row_loss(graphdef, objective, mask_id, mask_fraction)

        def norms(params, rest, ids, att, scored, keys):
            def one(i, a, s, k):
                g = jax.grad(loss)(params, rest, i, a, s, k)
                return jnp.mean(jnp.stack([_norms(x) for x in jax.tree_util.tree_leaves(g)]), axis=0)

            return jax.vmap(one)(ids, att, scored, keys)

        fn = jax.jit(norms)
        if len(_GRADNORM_CACHE) >= 8:
            _GRADNORM_CACHE.pop(next(iter(_GRADNORM_CACHE)))
        _GRADNORM_CACHE[key] = fn
    return fn


def gradnorm_scores(model, seqs: list[np.ndarray], *, p: float = math.inf, seed: int = 0,
                    rows: np.ndarray | None = None, mask_fraction: float = 0.15,
                    memory_bytes: int = 2 << 30, on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """Gradient-norm score per sequence (float64, higher = member).

    Args:
      model: a :class:`~glmjax.models.base.LoadedModel`.
      seqs: uint8 code arrays.
      p: the norm (1, 2 or inf).
      seed: seed of the masked-LM positions (masked families).
      rows: store row of each sequence (seeds its mask; default 0..N-1).
      memory_bytes: bound on the per-sequence gradients held at once (sets the micro-batch).
      on_rows: called with the number of sequences done after each micro-batch.
    """
    from flax import nnx

    from glmjax.engine import batching

    if p not in (1, 2) and not (isinstance(p, float) and math.isinf(p)):
        raise ConfigError(f"the gradient norm must be 1, 2 or inf, not {p}")
    if not seqs:
        return np.zeros(0)
    rows = np.arange(len(seqs)) if rows is None else np.asarray(rows, np.int64)
    graphdef, params, rest = nnx.split(model.module, nnx.Param, ...)
    norms = _gradnorm_fn(graphdef, model.objective, model.tokenizer.mask_id, float(mask_fraction))
    which = NORMS.index(float(p))
    base_key = jax.random.key(seed)
    fold = jax.jit(jax.vmap(lambda r: jax.random.fold_in(base_key, r)))

    codes = np.concatenate([np.asarray(s, np.uint8) for s in seqs])
    offs = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    tb = batching.tokenize_block(model.tokenizer, codes, offs)
    per_row = max(1, int(memory_bytes) // max(1, 4 * model.num_params()))
    plan = batching.plan_batches(tb.lengths, batching.padding_policy(model.spec), model.config.max_len,
                                 lambda L: min(per_row, 64, len(seqs)))
    out = np.zeros(len(seqs))
    done = 0
    for length, idx in plan:
        size = min(per_row, 64, len(seqs))
        b = batching.assemble(tb, idx, length, size, model.tokenizer.pad_id, rows, np.zeros(len(seqs), np.int64))
        r = np.concatenate([rows[idx], np.full(size - len(idx), rows[idx[0]])])
        v = np.asarray(norms(params, rest, jnp.asarray(b.ids), jnp.asarray(b.attention_mask),
                             jnp.asarray(b.scored), fold(jnp.asarray(r))))
        out[idx] = -v[:len(idx), which].astype(np.float64)
        done += len(idx)
        if on_rows is not None:
            on_rows(len(idx))
    if not np.isfinite(out).all():
        raise ConfigError("the gradient-norm attack produced NaN or infinite norms")
    return out
