"""Canary extraction: prompt the model with a canary's prefix and see how much of the secret it
reproduces.

Causal families (``greedy``, ``beam``): the prefix is prefilled once and the secret is decoded
``k`` nucleotides at a time with the family's incremental step, choices restricted to the four
base tokens A C G T. Beam search keeps the ``W`` most likely partial secrets (log p summed over
the decoded bases); greedy is the ``W = 1`` case. A whole decode (prefill, ``k`` steps, beam
bookkeeping) is one jitted function per ``(W, k)``, run on batches of canaries whose prefixes have
the same token length.

Masked families (``fill``): iterative mask filling, most confident first. Every token covering a
secret nucleotide is masked; each round predicts all still-masked positions, fills the single
most confident one with its arg-max token and repeats until none is left. A position's choices
are the tokens spelling exactly its span of nucleotides and agreeing with the known prefix bases
where the token straddles prefix and secret (for character tokenizers: the four bases). The token
layout is the canary's own tokenization (``layout="canary"``): for character and k-mer
tokenizers it does not depend on the secret, for BPE it tells the attacker the token lengths of
the secret (a worst-case audit); ``layout="placeholder"`` uses the tokenization of the prefix
followed by ``A * k`` instead.

Metrics per canary: the extracted secret, exact match, per-nucleotide accuracy, Levenshtein edit
distance; :meth:`ExtractionReport.by_repetitions` aggregates them per repetition count. Records
carry the secrets; :meth:`ExtractionRecord.to_dict` and :meth:`ExtractionReport.to_dict` replace
them by hashes unless ``reveal=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmjax import alphabet, jitcache
from glmjax.audit.decoding import (
    BASES,
    as_codes,
    base_token_ids,
    causal_prefix_ids,
    covering_tokens,
    token_strings,
)
from glmjax.errors import CanaryError, ConfigError
from glmjax.kernels import trie
from glmjax.models.decoding import CausalDecoder

METHODS = ("greedy", "beam", "fill")


# ------------------------------------------------------------------------------------------------
# Metrics


def edit_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Levenshtein distance between the rows of two code arrays ``[n, la]`` and ``[n, lb]``
    (unit costs), vectorised over rows: int64 ``[n]``."""
    a = np.atleast_2d(np.asarray(a))
    b = np.atleast_2d(np.asarray(b))
    n, la = a.shape
    lb = b.shape[1]
    prev = np.broadcast_to(np.arange(lb + 1, dtype=np.int64), (n, lb + 1)).copy()
    for i in range(1, la + 1):
        cur = np.empty_like(prev)
        cur[:, 0] = i
        sub = prev[:, :-1] + (a[:, i - 1:i] != b).astype(np.int64)
        dele = prev[:, 1:] + 1
        best = np.minimum(sub, dele)
        # insertions chain along the row: cur[j] = min(best[j-1], cur[j-1] + 1)
        for j in range(1, lb + 1):
            cur[:, j] = np.minimum(best[:, j - 1], cur[:, j - 1] + 1)
        prev = cur
    return prev[:, lb]


def nucleotide_accuracy(truth: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Fraction of positions where ``guess`` equals ``truth`` (rows of equal length): float64 ``[n]``."""
    truth = np.atleast_2d(np.asarray(truth))
    guess = np.atleast_2d(np.asarray(guess))
    if truth.shape[1] == 0:
        return np.ones(truth.shape[0])
    return (truth == guess).mean(axis=1)


@dataclass
class ExtractionRecord:
    """One canary's extraction: ``secret`` and ``extracted`` are ACGT strings (hidden by
    :meth:`to_dict` unless revealed); ``logp`` is the model's log p of the extracted secret under
    the method (sum of decoded base log p for causal methods, of the filled tokens' log p at
    their filling step for ``fill``)."""

    canary_id: str
    role: str
    repetitions: int
    secret: str
    extracted: str
    exact: bool
    accuracy: float
    edit_distance: int
    logp: float

    def to_dict(self, reveal: bool = False) -> dict[str, Any]:
        """JSON-ready record; the secret and the extracted bases only when ``reveal`` (never a
        hash of them: 4^k candidates invert any unkeyed hash)."""
        d = {"id": self.canary_id, "role": self.role, "repetitions": self.repetitions, "exact": self.exact,
             "accuracy": self.accuracy, "edit_distance": self.edit_distance, "logp": self.logp}
        if reveal:
            d.update(secret=self.secret, extracted=self.extracted)
        return d


@dataclass
class ExtractionReport:
    """All records of one extraction run and its parameters."""

    method: str
    params: dict[str, Any]
    records: list[ExtractionRecord] = field(default_factory=list)

    def by_repetitions(self) -> dict[int, dict[str, float]]:
        """Per repetition count (0 = never planted: controls and held-out canaries): number of
        canaries, exact-match rate, mean per-nucleotide accuracy, mean edit distance."""
        out: dict[int, dict[str, float]] = {}
        for r in sorted({rec.repetitions for rec in self.records}):
            recs = [x for x in self.records if x.repetitions == r]
            out[r] = {"n": len(recs),
                      "exact_rate": float(np.mean([x.exact for x in recs])),
                      "mean_accuracy": float(np.mean([x.accuracy for x in recs])),
                      "mean_edit_distance": float(np.mean([x.edit_distance for x in recs]))}
        return out

    def to_dict(self, reveal: bool = False) -> dict[str, Any]:
        """JSON-ready report (records with hashed secrets unless ``reveal``)."""
        return {"method": self.method, "params": dict(self.params),
                "by_repetitions": {str(k): v for k, v in self.by_repetitions().items()},
                "records": [r.to_dict(reveal) for r in self.records]}


def make_records(entries: Sequence[dict[str, Any]], extracted: Sequence[np.ndarray],
                 logps: Sequence[float]) -> list[ExtractionRecord]:
    """Records of manifest entries given their extracted secrets (uint8 codes) and log p."""
    out = []
    for e, guess, lp in zip(entries, extracted, logps, strict=True):
        truth = as_codes(e["secret"])
        guess = np.asarray(guess, np.uint8)
        out.append(ExtractionRecord(
            canary_id=str(e.get("id", "")), role=str(e.get("role", "canary")),
            repetitions=int(e.get("repetitions", 0)), secret=alphabet.decode(truth),
            extracted=alphabet.decode(guess), exact=bool(np.array_equal(truth, guess)),
            accuracy=float(nucleotide_accuracy(truth[None], guess[None])[0]),
            edit_distance=int(edit_distance(truth[None], guess[None])[0]), logp=float(lp)))
    return out


def manifest_entries(manifest: dict[str, Any], roles: Iterable[str] = ("canary", "control")) -> list[dict[str, Any]]:
    """The entries of a canary manifest (``glmjax.data.canaries``) with one of ``roles``."""
    roles = set(roles)
    out = [e for e in manifest.get("canaries", []) if e.get("role", "canary") in roles]
    if not out:
        raise CanaryError(f"the manifest has no entries with role {' or '.join(sorted(roles))}")
    return out


# ------------------------------------------------------------------------------------------------
# Causal families: beam search through the incremental decoding step


def beam_search(dec: CausalDecoder, params: Any, ids: jax.Array, base_ids: jax.Array, width: int,
                k: int) -> tuple[jax.Array, jax.Array]:
    """Beam search over the four bases (call inside ``jax.jit``), through the shared-prefix
    decoder: each prefix is prefilled once and its ``W`` beams hold only their own suffix state.

    Args:
      dec: the model's decoder.
      params: its parameters.
      ids: int32 ``[B, T]`` prefixes (no padding).
      base_ids: int32 ``[4]`` token ids of A C G T.
      width: beam width ``W``.
      k: nucleotides to decode.

    Returns:
      ``(seqs int32 [B, W, k], scores float32 [B, W])``: base indices (A=0 .. T=3) of the beams,
      best first, and their summed log p (``-inf`` for beams beyond the ``4^k`` that exist).
    """
    b, _ = ids.shape
    logits, shared, state = dec.prefix(params, ids, k)
    lp4 = trie.base_log_probs(logits, base_ids)                                   # [B, 4]
    state = jax.tree.map(lambda x: jnp.repeat(x, width, axis=1), state)           # [B, W, ...]
    lp4 = jnp.repeat(lp4[:, None], width, axis=1)                                 # [B, W, 4]
    # only beam 0 is alive at the start, so the first expansion yields 4 distinct candidates
    score = jnp.full((b, width), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    seqs = jnp.zeros((b, width, k), jnp.int32)

    def body(carry, step):
        state, score, seqs, lp4 = carry
        cand = (score[:, :, None] + lp4).reshape(b, width * 4)
        top, idx = jax.lax.top_k(cand, width)
        parent, base = idx // 4, idx % 4
        seqs = jnp.take_along_axis(seqs, parent[:, :, None], axis=1)
        seqs = jax.lax.dynamic_update_slice_in_dim(seqs, base[:, :, None].astype(jnp.int32), step, axis=2)
        state = jax.tree.map(lambda x: jax.vmap(lambda xs, ps: jnp.take(xs, ps, axis=0))(x, parent), state)
        logits, state = dec.suffix_step(params, shared, state, base_ids[base])
        lp4 = trie.base_log_probs(logits, base_ids)                               # [B, W, 4]
        return (state, top, seqs, lp4), None

    (_, score, seqs, _), _ = jax.lax.scan(body, (state, score, seqs, lp4), jnp.arange(k))
    return seqs, score


def _padded_rows(n: int, batch_size: int) -> int:
    """Rows of a batch holding ``n <= batch_size`` items: the next power of two, at most
    ``batch_size`` (so a handful of batch shapes compile)."""
    return max(n, min(1 << (n - 1).bit_length(), batch_size))


def _beam_fn(dec: CausalDecoder, width: int, k: int) -> Any:
    """Jitted ``(params, ids [B, T], base_ids [4]) -> (seqs, scores)`` for one ``(W, k)``."""
    return jitcache.cached(("beam", dec.key, width, k), lambda: jax.jit(
        lambda params, ids, base: beam_search(dec, params, ids, base, width, k)))


def decode_secrets(model: Any, prefixes: Sequence[str | np.ndarray], k: int, width: int = 1,
                   batch_size: int = 64, share_prefix: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Beam-search completions of ``k`` nucleotides for each prefix under a causal model.

    Prefixes are grouped by token length and decoded ``batch_size`` at a time (the last batch of a
    group is padded to a power of two with copies, so few shapes compile).

    Returns:
      ``(codes uint8 [n, k], logp float32 [n])``: the best beam of each prefix and its log p.
    """
    if width < 1:
        raise ConfigError(f"beam width must be >= 1 (got {width})")
    if k < 1:
        raise ConfigError(f"secret length must be >= 1 (got {k})")
    dec = CausalDecoder.of(model, share_prefix=share_prefix)
    base = jnp.asarray(base_token_ids(model.tokenizer))
    fn = _beam_fn(dec, int(width), int(k))
    encoded = [causal_prefix_ids(model.tokenizer, as_codes(p)) for p in prefixes]
    n = len(encoded)
    out = np.zeros((n, k), np.uint8)
    logp = np.zeros(n, np.float32)
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(int(e.shape[0]), []).append(i)
    for _, members in sorted(groups.items()):
        for lo in range(0, len(members), batch_size):
            chunk = members[lo:lo + batch_size]
            pad = chunk + [chunk[-1]] * (_padded_rows(len(chunk), batch_size) - len(chunk))
            ids = jnp.asarray(np.stack([encoded[i] for i in pad]))
            seqs, scores = fn(dec.params, ids, base)
            seqs = np.asarray(seqs[:, 0])
            scores = np.asarray(scores[:, 0])
            out[chunk] = seqs[:len(chunk)].astype(np.uint8)
            logp[chunk] = scores[:len(chunk)]
    return out, logp


# ------------------------------------------------------------------------------------------------
# Masked families: iterative mask filling


def fill_masks(forward: Any, ids: jax.Array, attention_mask: jax.Array, positions: jax.Array,
               allowed: jax.Array, mask_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Most-confident-first filling of masked positions (call inside ``jax.jit``).

    Args:
      forward: ``(ids [B, L], attention_mask [B, L]) -> logits [B, L, V]``.
      ids: int32 ``[B, L]`` token ids (the masked positions' contents are ignored).
      attention_mask: bool ``[B, L]``.
      positions: int32 ``[B, m]`` positions to fill (distinct per row).
      allowed: bool ``[B, m, V]`` tokens each position may take (at least one per position).
      mask_id: the mask token.

    Returns:
      ``(tokens int32 [B, m], order int32 [B, m], logp float32 [B, m])``: the filled token of each
      position, the round in which it was filled (0 = first) and its log p in that round.
    """
    b, m = positions.shape
    rb = jnp.arange(b)
    cur = ids.at[rb[:, None], positions].set(mask_id)

    def body(i, carry):
        cur, filled, order, got = carry
        logits = forward(cur, attention_mask).astype(jnp.float32)
        at = jnp.take_along_axis(logits, positions[:, :, None], axis=1)          # [B, m, V]
        lp = jnp.where(allowed, jax.nn.log_softmax(at, axis=-1), -jnp.inf)
        best = lp.max(axis=-1)
        arg = lp.argmax(axis=-1).astype(cur.dtype)
        # an unfilled position always beats a filled one, even if all its tokens underflow
        conf = jnp.where(filled, -jnp.inf, jnp.maximum(best, jnp.float32(-1e30)))
        j = jnp.argmax(conf, axis=-1)
        cur = cur.at[rb, positions[rb, j]].set(arg[rb, j])
        filled = filled.at[rb, j].set(True)
        order = order.at[rb, j].set(i)
        got = got.at[rb, j].set(best[rb, j])
        return cur, filled, order, got

    init = (cur, jnp.zeros((b, m), bool), jnp.zeros((b, m), jnp.int32), jnp.zeros((b, m), jnp.float32))
    cur, _, order, got = jax.lax.fori_loop(0, m, body, init)
    return jnp.take_along_axis(cur, positions, axis=1), order, got


def _fill_fn(graphdef: Any, mask_id: int) -> Any:
    def make():
        def run(params, ids, att, positions, allowed):
            module = nnx.merge(graphdef, params)
            return fill_masks(module, ids, att, positions, allowed, mask_id)

        return jax.jit(run)

    return jitcache.cached(("fill", graphdef, mask_id), make)


@dataclass
class FillLayout:
    """Token layout of one canary for mask filling.

    ``ids`` int32 ``[L]``; ``positions`` int ``[m]`` tokens covering secret nucleotides;
    ``starts``/``widths`` int ``[m]`` their nucleotide spans in the canary; ``known`` int8
    ``[m, max width]`` the known base code (0..3) at each span offset, -1 inside the secret.
    """

    ids: np.ndarray
    positions: np.ndarray
    starts: np.ndarray
    widths: np.ndarray
    known: np.ndarray


def fill_layout(tokenizer: Any, prefix: np.ndarray, secret: np.ndarray, layout: str = "canary") -> FillLayout:
    """The masked-filling layout of a canary (see the module docstring for ``layout``)."""
    if layout not in ("canary", "placeholder"):
        raise ConfigError(f"fill layout must be 'canary' or 'placeholder' (got {layout!r})")
    k = secret.shape[0]
    body = secret if layout == "canary" else np.zeros(k, np.uint8)
    pos, enc, nts, start = covering_tokens(tokenizer, prefix, body)
    p = prefix.shape[0]
    widths = nts[pos]
    wmax = int(widths.max()) if pos.shape[0] else 1
    known = np.full((pos.shape[0], wmax), -1, np.int8)
    for r, t in enumerate(pos.tolist()):
        for j in range(int(nts[t])):
            q = int(start[t]) + j
            if q < p:
                known[r, j] = int(prefix[q])
    return FillLayout(enc.ids.astype(np.int32), pos, start[pos], widths, known)


class _Vocab:
    """Token strings of a tokenizer as code matrices per width, for constraint masks."""

    def __init__(self, tokenizer: Any, rows: int):
        strings = token_strings(tokenizer)
        self.rows = rows
        self.by_width: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for w in sorted({len(s) for s in strings if s is not None}):
            tids = np.asarray([i for i, s in enumerate(strings) if s is not None and len(s) == w], np.int64)
            mat = np.stack([alphabet.encode(strings[i]) for i in tids]).astype(np.int8)
            self.by_width[w] = (tids, mat)
        self.strings = strings

    def allowed(self, width: int, known: np.ndarray) -> np.ndarray:
        """bool ``[rows]``: tokens of ``width`` nucleotides matching ``known`` (-1 = free)."""
        out = np.zeros(self.rows, bool)
        if width not in self.by_width:
            return out
        tids, mat = self.by_width[width]
        kn = known[:width]
        ok = ((mat == kn[None, :]) | (kn[None, :] < 0)).all(axis=1)
        out[tids[ok]] = True
        return out


def fill_secrets(model: Any, prefixes: Sequence[str | np.ndarray], secrets: Sequence[str | np.ndarray],
                 layout: str = "canary", batch_size: int = 32) -> tuple[list[np.ndarray], np.ndarray]:
    """Iterative mask filling of each canary's secret under a masked LM.

    ``secrets`` give the secret lengths (and, with ``layout="canary"``, the token layout; the
    secret's tokens are masked before the model sees anything).

    Returns:
      ``(codes, logp)``: per canary the extracted secret (uint8 codes of the secret's length) and
      the summed log p of the filled tokens at their filling rounds.
    """
    tok = model.tokenizer
    if model.objective != "masked":
        raise ConfigError(f"{model.family} is causal; use greedy or beam extraction")
    if tok.mask_id is None:
        raise ConfigError(f"tokenizer {tok.name!r} has no mask token")
    graphdef, params = nnx.split(model.module)
    fn = _fill_fn(graphdef, int(tok.mask_id))
    layouts = []
    for p, s in zip(prefixes, secrets, strict=True):
        layouts.append(fill_layout(tok, as_codes(p), as_codes(s), layout))
    probe = jnp.zeros((1, int(layouts[0].ids.shape[0])), jnp.int32) if layouts else None
    vocab_rows = int(jax.eval_shape(lambda x: nnx.merge(graphdef, params)(x, None), probe).shape[-1]) \
        if probe is not None else 0
    vocab = _Vocab(tok, vocab_rows)
    n = len(layouts)
    extracted: list[np.ndarray] = [np.zeros(0, np.uint8)] * n
    logp = np.zeros(n, np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, lay in enumerate(layouts):
        groups.setdefault((int(lay.ids.shape[0]), int(lay.positions.shape[0])), []).append(i)
    for (length, m), members in sorted(groups.items()):
        if m == 0:
            for i in members:
                extracted[i] = np.zeros(0, np.uint8)
            continue
        for lo in range(0, len(members), batch_size):
            chunk = members[lo:lo + batch_size]
            pad = chunk + [chunk[-1]] * (_padded_rows(len(chunk), batch_size) - len(chunk))
            ids = np.stack([layouts[i].ids for i in pad])
            pos = np.stack([layouts[i].positions for i in pad]).astype(np.int32)
            allowed = np.zeros((len(pad), m, vocab_rows), bool)
            for r, i in enumerate(pad):
                lay = layouts[i]
                for j in range(m):
                    allowed[r, j] = vocab.allowed(int(lay.widths[j]), lay.known[j])
                    if not allowed[r, j].any():
                        raise ConfigError(f"tokenizer {tok.name!r} has no token of {int(lay.widths[j])} "
                                          "nucleotides matching the known bases; cannot fill this secret")
            toks, _, got = fn(params, jnp.asarray(ids), jnp.ones((len(pad), length), bool), jnp.asarray(pos),
                              jnp.asarray(allowed))
            toks = np.asarray(toks)
            got = np.asarray(got)
            for r, i in enumerate(chunk):
                extracted[i] = _spell(layouts[i], toks[r], vocab.strings, prefixes[i], secrets[i])
                logp[i] = float(got[r].sum())
    return extracted, logp


def _spell(lay: FillLayout, toks: np.ndarray, strings: list[str | None], prefix: Any, secret: Any) -> np.ndarray:
    """The secret spelled by the filled tokens (uint8 codes)."""
    p = as_codes(prefix).shape[0]
    k = as_codes(secret).shape[0]
    out = np.zeros(k, np.uint8)
    for start, width, t in zip(lay.starts.tolist(), lay.widths.tolist(), toks.tolist(), strict=True):
        s = alphabet.encode(strings[t])
        for j in range(width):
            q = start + j - p
            if 0 <= q < k:
                out[q] = s[j]
    return out


# ------------------------------------------------------------------------------------------------
# Entry point


def extract(model: Any, entries: Sequence[dict[str, Any]], method: str | None = None, beam_width: int = 8,
            batch_size: int = 64, layout: str = "canary") -> ExtractionReport:
    """Run an extraction attack on canaries.

    Args:
      model: a loaded model (:func:`glmjax.models.load`).
      entries: manifest entries (dicts with ``id``, ``prefix``, ``secret``, ``repetitions``,
        optional ``role``), e.g. :func:`manifest_entries`.
      method: ``greedy`` or ``beam`` (causal families; default greedy) or ``fill`` (masked).
      beam_width: ``W`` for ``beam``.
      batch_size: canaries per compiled call.
      layout: token layout of ``fill`` (``canary`` or ``placeholder``).

    Returns:
      :class:`ExtractionReport` (secrets inside the records; hidden by ``to_dict`` by default).
    """
    if method is None:
        method = "greedy" if model.objective == "causal" else "fill"
    if method not in METHODS:
        raise ConfigError(f"unknown extraction method {method!r}; choose one of {', '.join(METHODS)}")
    if (method == "fill") != (model.objective == "masked"):
        want = "fill" if model.objective == "masked" else "greedy or beam"
        raise ConfigError(f"extraction method {method!r} does not apply to the {model.objective} family "
                          f"{model.family!r}; use {want}")
    entries = list(entries)
    secrets = [as_codes(e["secret"]) for e in entries]
    for e, s in zip(entries, secrets, strict=True):
        if s.size and s.max() > 3:
            raise CanaryError(f"canary {e.get('id', '?')}: secret contains N; secrets are A/C/G/T strings")
    extracted: list[np.ndarray] = [np.zeros(0, np.uint8)] * len(entries)
    logps = np.zeros(len(entries), np.float32)
    params: dict[str, Any] = {"family": model.family, "batch_size": batch_size}
    if method == "fill":
        extracted, logps = fill_secrets(model, [e["prefix"] for e in entries], secrets, layout=layout,
                                        batch_size=batch_size)
        params["layout"] = layout
    else:
        width = 1 if method == "greedy" else int(beam_width)
        params["beam_width"] = width
        by_k: dict[int, list[int]] = {}
        for i, s in enumerate(secrets):
            by_k.setdefault(int(s.shape[0]), []).append(i)
        for k, idx in sorted(by_k.items()):
            codes, lp = decode_secrets(model, [entries[i]["prefix"] for i in idx], k, width=width,
                                       batch_size=batch_size)
            for j, i in enumerate(idx):
                extracted[i] = codes[j]
                logps[i] = lp[j]
    return ExtractionReport(method=method, params=params, records=make_records(entries, extracted, logps))


__all__ = ["BASES", "ExtractionRecord", "ExtractionReport", "beam_search", "decode_secrets", "edit_distance",
           "extract", "fill_masks", "fill_secrets", "make_records", "manifest_entries", "nucleotide_accuracy"]
