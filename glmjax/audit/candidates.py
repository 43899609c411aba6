"""Exact exposure by enumerating every candidate secret.

The exposure of a canary (Carlini et al., 2019, "The Secret Sharer") with a secret of ``k``
nucleotides is ``log2 |R| - log2 rank``, ``R`` the ``4^k`` candidate secrets and ``rank`` the
position of the true secret when candidates are sorted by the model's likelihood given the
canary's prefix (rank 1 = most likely, so exposure ranges from 0 to ``2k`` bits).

Causal families (:func:`causal_candidate_logprobs_many`): ``log p(secret | prefix)`` of every
candidate from a walk of the candidate trie with the family's shared-prefix decoding step
(:mod:`glmjax.kernels.trie`, :mod:`glmjax.models.decoding`). Canaries with the same secret length
and prefix token length are walked together, ``C`` canaries per device call (spread over all local
devices); each prefix is prefilled once and its keys/values (or long-convolution output) are read by
all its trie nodes, while a node's state holds only its own suffix. Each trie level extends its
parents by one base in one batched step; the last level reads its log p off the parents'
distributions: ``(4^k - 4) / 3`` one-token steps per canary instead of ``4^k`` forward passes over
prefix + secret. Memory is bounded: once a level would hold more than ``block`` nodes, its parents
are expanded ``block / 4`` at a time, depth-first, with ``block`` the largest power of two whose
node states along the deepest path of the walk fit ``memory_limit`` bytes (default
:func:`default_memory_limit`: a quarter of the device's memory, 2 GB where it is not reported).

Masked families (:func:`masked_candidate_pll`): a masked LM defines no likelihood of the secret
given the prefix; each candidate ``prefix + secret`` is scored by the pseudo-log-likelihood of
its secret tokens: every token that covers a secret nucleotide is masked once, alone, and the
log p of the candidate's token at that position is summed (score mode ``pll-secret``). The
candidates x masked positions are batched through the forward pass.

Candidate order in every output: index = base-4 code of the secret, A=0 C=1 G=2 T=3, first base
most significant (:func:`glmjax.audit.decoding.codes_to_index`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from glmjax import jitcache
from glmjax.audit.decoding import (
    as_codes,
    base_token_ids,
    causal_prefix_ids,
    codes_to_index,
    covering_tokens,
    index_to_codes,
    token_strings,
)
from glmjax.errors import CanaryError, ConfigError
from glmjax.kernels import trie
from glmjax.models.decoding import CausalDecoder, state_bytes_per_row, tree_bytes

DEFAULT_MEMORY_LIMIT = 2 * 1024 ** 3
MAX_BLOCK = 1 << 16
MAX_ROWS = 1 << 16  # canaries x block rows per device call
MAX_K = 16
CANDIDATE_CHUNK = 4096  # masked-LM candidates tokenized at a time (bounds host memory)


@dataclass
class TrieStats:
    """What a trie walk did: ``decode_rows`` single-token steps computed (rows of the decoding
    step over all canaries and calls, padding of the top levels and of the last canary batch
    included; the trie itself needs ``(4^k - 4) / 3`` per canary), ``block`` (largest level block
    per canary), ``canaries_per_call`` (most canaries walked in the same calls), ``bytes_per_node``
    (row state of one node), ``shared_bytes`` (state read by all nodes of one canary; the largest
    over prefix-length groups), ``calls``
    (jitted expansions), ``seconds`` (wall time, including compilation), ``shared_prefix`` (the
    family's prefix sharing was used)."""

    k: int
    decode_rows: int
    block: int
    bytes_per_node: int
    calls: int
    seconds: float
    canaries: int = 1
    canaries_per_call: int = 1
    shared_bytes: int = 0
    shared_prefix: bool = False


def default_memory_limit() -> int:
    """Bytes a trie walk may take per device: a quarter of the first local device's memory where
    the backend reports it (GPU, TPU), else :data:`DEFAULT_MEMORY_LIMIT` (2 GB)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    limit = stats.get("bytes_limit")
    return int(limit) // 4 if limit else DEFAULT_MEMORY_LIMIT


def _limit(memory_limit: int | None) -> int:
    return int(memory_limit) if memory_limit is not None else default_memory_limit()


def choose_block(k: int, bytes_per_node: int, memory_limit: int, vocab: int) -> int:
    """Largest power-of-two level block (4 <= block <= min(65536, 4^(k-1))) whose trie walk stays
    within ``memory_limit`` bytes: ``k - 1`` levels of ``block`` decoding states on the depth-first
    path, the block being expanded, and its float32 logits."""
    per_node = bytes_per_node + 3 * 4 * vocab
    cap = min(MAX_BLOCK, 4 ** max(k - 1, 1))
    block = 4
    while block * 2 <= cap and trie.live_nodes(max(k - 1, 1), block * 2) * per_node <= memory_limit:
        block *= 2
    return block


def choose_canaries_per_call(k: int, block: int, bytes_per_node: int, shared_bytes: int, memory_limit: int,
                             vocab: int, n: int, devices: int = 1) -> int:
    """Canaries walked in the same calls: a power of two (times ``devices``) with at most
    :data:`MAX_ROWS` rows per device and call, every canary's walk (``block``-row levels along the
    depth-first path, its shared prefix state) within ``memory_limit`` bytes per device, and no
    more than the ``n`` canaries there are (rounded up to fill the devices)."""
    per_canary = trie.live_nodes(max(k - 1, 1), block) * (bytes_per_node + 3 * 4 * vocab) + shared_bytes
    cap = max(1, min(MAX_ROWS // block, memory_limit // max(per_canary, 1)))
    c = 1
    while c * 2 <= cap and c * devices < n:
        c *= 2
    return c * devices


def count_calls(k: int, block: int) -> int:
    """Jitted expansions of one walk of depth ``k`` with level block ``block`` (same walk as
    :class:`_Walker`; 0 for ``k == 1``)."""
    return sum(count_level_and_leaf_calls(k, block))


def count_level_and_leaf_calls(k: int, block: int) -> tuple[int, int]:
    """``(level expansions, leaf expansions)`` of one walk of depth ``k`` with level block
    ``block``."""
    if k == 1:
        return 0, 0
    size = block // 4

    def walk(depth: int, valid: int) -> tuple[int, int]:
        level = leaf = 0
        for start in range(0, valid, size):
            real = min(size, valid - start)
            if depth == k - 2:
                leaf += 1
            else:
                below = walk(depth + 1, 4 * real)
                level, leaf = level + 1 + below[0], leaf + below[1]
        return level, leaf

    return walk(0, 1)


class _Walker:
    """Depth-first, block-bounded walk of the candidate tries of ``C`` canaries at once.

    Every level array has ``[C, block]`` rows so that the level and leaf expansions compile once:
    levels with fewer nodes (the top of the trie) keep their ``valid`` nodes in the first rows and
    fill the rest with copies of real states, whose children are computed and ignored.
    """

    def __init__(self, dec: CausalDecoder, params: Any, shared: Any, base_ids: np.ndarray, k: int, block: int,
                 on_leaves: Callable[[int], None] | None = None):
        self.on_leaves = on_leaves
        self.reported = 0  # leaf blocks passed to on_leaves (computed ones only, never queued ones)
        self.params = params
        self.shared = shared
        self.base_ids = jnp.asarray(base_ids, jnp.int32)
        self.k = k
        self.block = block
        self.size = block // 4
        self.level, self.leaves = _expanders(dec)
        self.pieces: list[tuple[int, int, jax.Array]] = []
        self.calls = 0

    def walk(self, state: Any, cum: jax.Array, logp4: jax.Array, depth: int, offset: int, valid: int) -> None:
        """Expand the ``valid`` nodes of ``depth`` held in the first rows (base-4 codes
        ``offset .. offset + valid - 1``)."""
        size = self.size
        for start in range(0, valid, size):
            s = jnp.asarray(start, jnp.int32)
            real = min(size, valid - start)
            self.calls += 1
            if depth == self.k - 2:
                out = self.leaves(self.params, self.shared, state, cum, logp4, self.base_ids, s, size=size)
                self.pieces.append(((offset + start) * 16, 16 * real, out))
                if self.on_leaves is not None:
                    self.report(ahead=self.MAX_AHEAD)
            else:
                cs, cc, cl = self.level(self.params, self.shared, state, cum, logp4, self.base_ids, s, size=size)
                self.walk(cs, cc, cl, depth + 1, (offset + start) * 4, 4 * real)


    #: with a progress callback, leaf blocks the host may queue ahead of the last one reported
    #: (enough to keep the device busy, few enough that the progress stays current)
    MAX_AHEAD = 64

    def report(self, ahead: int | None) -> None:
        """Pass the leaf blocks the device has finished, in order, to ``on_leaves``: those already
        computed (a poll, the device stays busy), and with ``ahead`` set, after waiting, all but
        the last ``ahead`` of them."""
        while self.reported < len(self.pieces):
            piece = self.pieces[self.reported][2]
            if not piece.is_ready():
                if ahead is None or len(self.pieces) - self.reported <= ahead:
                    return
                piece.block_until_ready()
            self.on_leaves(self.pieces[self.reported][1])
            self.reported += 1


def _expanders(dec: CausalDecoder) -> tuple[Any, Any]:
    """Jitted level/leaf expansions of a model's shared-prefix decoding step."""
    return jitcache.cached(("trie-expanders", dec.key), lambda: trie.make_expanders(dec.suffix_step))


def _prefix_fn(dec: CausalDecoder, suffix_len: int) -> Any:
    """Jitted ``(params, ids [C, T]) -> (logits [C, V], shared, state [C, 1, ...])``."""
    return jitcache.cached(("trie-prefix", dec.key, suffix_len),
                           lambda: jax.jit(lambda params, ids: dec.prefix(params, ids, suffix_len)))


def _root_level(state: Any, logp4: jax.Array, block: int) -> tuple[Any, jax.Array, jax.Array]:
    """The root level of ``C`` tries as a ``[C, block]`` level (the root in row 0, copies after):
    row states, cumulative log p (0) and next-base log p ``[C, block, 4]``."""
    rows = jnp.zeros((block,), jnp.int32)
    root = jax.tree.map(lambda x: jnp.take(x, rows, axis=1), state)
    return root, jnp.zeros((logp4.shape[0], block), jnp.float32), jnp.take(logp4[:, None], rows, axis=1)


def _canary_sharding(c: int) -> tuple[Any, Any] | None:
    """``(canary-axis sharding, replicated sharding)`` over all local devices, or None on one
    device or when ``c`` canaries do not divide evenly over them."""
    devices = jax.local_devices()
    if len(devices) == 1 or c % len(devices):
        return None
    from glmjax.engine.sharding import batch_sharding, make_mesh, replicated

    mesh = make_mesh()
    return batch_sharding(mesh), replicated(mesh)


def causal_candidate_logprobs_many(model: Any, prefixes: Sequence[str | np.ndarray], k: int,
                                   memory_limit: int | None = None, block: int | None = None,
                                   canaries_per_call: int | None = None, share_prefix: bool = True,
                                   on_batch: Callable[[int], None] | None = None,
                                   on_candidates: Callable[[int], None] | None = None) -> tuple[np.ndarray, TrieStats]:
    """``log p(candidate | prefix)`` of all ``4^k`` secrets of every prefix, by batched trie walks.

    Args:
      model: a loaded causal model (:class:`glmjax.models.LoadedModel`).
      prefixes: the canaries' prefixes (DNA strings or uint8 codes); prefixes of different token
        lengths are walked in separate groups.
      k: secret length in nucleotides (1..16).
      memory_limit: bytes the walk may take per device (default :func:`default_memory_limit`).
      block: force the level block size (a power of two >= 4) instead of deriving it.
      canaries_per_call: force the number of canaries walked in the same calls.
      share_prefix: use the family's shared-prefix decoding (False: every trie node carries a
        copy of the whole decoding state, prefix included; for comparison).
      on_batch: called with the number of canaries finished after each batch of canaries.
      on_candidates: called with the number of candidates scored since its last call, as the
        device finishes them (for a progress bar; it waits for computed blocks, queued ones are
        not counted).

    Returns:
      ``(logp, stats)``: float32 ``[n, 4^k]`` natural-log probabilities indexed by the base-4 code
      of the secret (A=0 C=1 G=2 T=3, first base most significant) and :class:`TrieStats`.
    """
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"exact exposure enumerates 4^k candidates; k must be in 1..{MAX_K} (got {k})")
    if block is not None and (block < 4 or block & (block - 1)):
        raise ConfigError(f"trie block must be a power of two >= 4 (got {block})")
    if canaries_per_call is not None and canaries_per_call < 1:
        raise ConfigError(f"canaries per call must be >= 1 (got {canaries_per_call})")
    t0 = time.perf_counter()
    dec = CausalDecoder.of(model, share_prefix=share_prefix)
    tok = model.tokenizer
    base_ids = base_token_ids(tok)
    base = jnp.asarray(base_ids)
    encoded = [causal_prefix_ids(tok, as_codes(p)) for p in prefixes]
    n = len(encoded)
    out = np.empty((n, 4 ** k), np.float32)
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(int(e.shape[0]), []).append(i)
    suffix_len = max(k - 1, 1)
    prefix_fn = _prefix_fn(dec, suffix_len)
    stats = TrieStats(k=k, decode_rows=0, block=0, bytes_per_node=0, calls=0, seconds=0.0, canaries=n,
                      shared_prefix=dec.shares_prefix)
    devices = len(jax.local_devices())
    done = 0
    for t, members in sorted(groups.items()):
        # the shapes of one canary's state decide the block and the canaries per call
        probe = jax.eval_shape(prefix_fn, dec.params, jax.ShapeDtypeStruct((1, t), jnp.int32))
        vocab = int(probe[0].shape[-1])
        bpn = state_bytes_per_row(probe[2], row_axes=2)
        shared_bytes = tree_bytes(probe[1])
        blk = (choose_block(k, bpn, _limit(memory_limit), vocab) if block is None
               else max(4, min(block, 4 ** max(k - 1, 1))))
        cpc = canaries_per_call or choose_canaries_per_call(k, blk, bpn, shared_bytes, _limit(memory_limit), vocab,
                                                            len(members), devices)
        sharding = _canary_sharding(cpc)
        params = dec.params if sharding is None else jax.device_put(dec.params, sharding[1])
        # over groups of several prefix lengths: the largest block, state and batch
        stats.block, stats.bytes_per_node = max(stats.block, blk), max(stats.bytes_per_node, bpn)
        stats.shared_bytes = max(stats.shared_bytes, shared_bytes)
        stats.canaries_per_call = max(stats.canaries_per_call, cpc)
        for lo in range(0, len(members), cpc):
            chunk = members[lo:lo + cpc]
            pad = chunk + [chunk[-1]] * (cpc - len(chunk))
            ids = np.stack([encoded[i] for i in pad])
            ids = jax.device_put(ids, sharding[0]) if sharding is not None else jnp.asarray(ids)
            logits, shared, state = prefix_fn(params, ids)
            logp4 = trie.base_log_probs(logits, base)                                # [C, 4]
            if k == 1:
                out[chunk] = np.asarray(logp4)[:len(chunk)]
                if on_candidates is not None:
                    on_candidates(4 * len(chunk))
            else:
                report = None if on_candidates is None else (lambda c, m=len(chunk): on_candidates(m * c))
                walker = _Walker(dec, params, shared, base_ids, k, blk, on_leaves=report)
                walker.walk(*_root_level(state, logp4, blk), 0, 0, 1)
                # one batched device-to-host copy of all leaf blocks (transfers overlap)
                host = jax.device_get([piece for _, _, piece in walker.pieces])
                if on_candidates is not None:
                    walker.report(ahead=0)
                for (start, count, _), arr in zip(walker.pieces, host, strict=True):
                    out[chunk, start:start + count] = arr[:len(chunk), :count]
                stats.calls += walker.calls
                stats.decode_rows += walker.calls * blk * cpc
            done += len(chunk)
            if on_batch is not None:
                on_batch(done)
    stats.seconds = time.perf_counter() - t0
    return out, stats


def causal_candidate_logprobs(model: Any, prefix: str | np.ndarray, k: int,
                              memory_limit: int | None = None, block: int | None = None,
                              share_prefix: bool = True) -> tuple[np.ndarray, TrieStats]:
    """``log p(candidate | prefix)`` of all ``4^k`` secrets of one prefix: float32 ``[4^k]`` and
    :class:`TrieStats` (:func:`causal_candidate_logprobs_many` with one canary)."""
    logp, stats = causal_candidate_logprobs_many(model, [prefix], k, memory_limit=memory_limit, block=block,
                                                 canaries_per_call=1, share_prefix=share_prefix)
    return logp[0], stats


def estimate_walk_seconds(model: Any, prefixes: Sequence[str | np.ndarray], k: int,
                          memory_limit: int | None = None) -> float:
    """Predicted seconds of :func:`causal_candidate_logprobs_many` on these prefixes (compilation
    excluded): one level and one leaf expansion are compiled and timed on the first prefix group's
    shapes, and multiplied by the number of each the walks take."""
    if k == 1 or not len(prefixes):
        return 0.0
    dec = CausalDecoder.of(model)
    tok = model.tokenizer
    base_ids = base_token_ids(tok)
    encoded = [causal_prefix_ids(tok, as_codes(p)) for p in prefixes]
    groups: dict[int, int] = {}
    for e in encoded:
        groups[int(e.shape[0])] = groups.get(int(e.shape[0]), 0) + 1
    suffix_len = max(k - 1, 1)
    prefix_fn = _prefix_fn(dec, suffix_len)
    level, leaves = _expanders(dec)
    devices = len(jax.local_devices())
    total = 0.0
    per_call = None
    for t, count in sorted(groups.items()):
        probe = jax.eval_shape(prefix_fn, dec.params, jax.ShapeDtypeStruct((1, t), jnp.int32))
        vocab = int(probe[0].shape[-1])
        bpn = state_bytes_per_row(probe[2], row_axes=2)
        blk = choose_block(k, bpn, _limit(memory_limit), vocab)
        cpc = choose_canaries_per_call(k, blk, bpn, tree_bytes(probe[1]), _limit(memory_limit), vocab, count, devices)
        if per_call is None:
            ids = jnp.asarray(np.stack([next(e for e in encoded if e.shape[0] == t)] * cpc))
            logits, shared, state = prefix_fn(dec.params, ids)
            root, cum, lp4 = _root_level(state, trie.base_log_probs(logits, jnp.asarray(base_ids)), blk)
            args = (dec.params, shared, root, cum, lp4, jnp.asarray(base_ids), jnp.asarray(0, jnp.int32))
            per_call = []
            for fn in (level, leaves):                      # the two expansions, compiled, then timed
                jax.block_until_ready(fn(*args, size=blk // 4))
                t1 = time.perf_counter()
                jax.block_until_ready(fn(*args, size=blk // 4))
                per_call.append(time.perf_counter() - t1)
        n_level, n_leaf = count_level_and_leaf_calls(k, blk)
        total += -(-count // cpc) * (n_level * per_call[0] + n_leaf * per_call[1])
    return total


def estimate_exposure_seconds(model: Any, prefixes: Sequence[str | np.ndarray], k: int,
                              memory_limit: int | None = None, batch_size: int = 1024) -> float:
    """Predicted seconds of :func:`exact_exposures` for canaries with these prefixes and secrets of
    ``k`` nucleotides (compilation excluded; what it compiles is reused by the real run).

    Causal families: :func:`estimate_walk_seconds`. Masked families: the rows (candidate x
    masked position) of 256 sampled candidates of the first prefix, their tokenization time and
    one timed forward pass of ``batch_size`` rows, scaled to all canaries' ``4^k`` candidates."""
    if not len(prefixes):
        return 0.0
    if model.objective == "causal":
        return estimate_walk_seconds(model, prefixes, k, memory_limit=memory_limit)
    tok = model.tokenizer
    rng = np.random.default_rng(0)
    sample = rng.integers(0, 4 ** k, min(256, 4 ** k))
    t0 = time.perf_counter()
    groups = list(candidate_token_groups(tok, as_codes(prefixes[0]), index_to_codes(sample, k)))
    host = (time.perf_counter() - t0) / len(sample)
    n_rows = sum(pos.shape[0] * members.shape[0] for pos, members, _ in groups)
    if n_rows == 0:
        return host * len(prefixes) * 4 ** k
    pos, _, ids = next((g[0], g[1], g[2]) for g in groups if g[0].shape[0])
    rows = max(1, min(batch_size, 1 << max(n_rows - 1, 0).bit_length()))
    b_ids = jnp.asarray(np.repeat(ids[:1], rows, axis=0).astype(np.int32))
    b_att = jnp.ones(b_ids.shape, bool)
    b_pos = jnp.full((rows,), int(pos[0]), jnp.int32)
    fn = _pll_rows_fn(model)
    jax.block_until_ready(fn(model.state, b_ids, b_att, b_pos))              # compile
    t1 = time.perf_counter()
    jax.block_until_ready(fn(model.state, b_ids, b_att, b_pos))
    per_batch = time.perf_counter() - t1
    total = len(prefixes) * 4 ** k
    return total * host + -(-total * n_rows // (len(sample) * rows)) * per_batch


# ------------------------------------------------------------------------------------------------
# Masked families: PLL of the secret tokens


def secret_token_positions(tokenizer: Any, prefix: np.ndarray, secret: np.ndarray) -> tuple[np.ndarray, Any]:
    """Token positions of ``prefix + secret`` covering at least one secret nucleotide, and the
    encoding: ``(positions int [m], Encoded)``."""
    pos, enc, _, _ = covering_tokens(tokenizer, prefix, secret)
    return pos, enc


def candidate_token_groups(tokenizer: Any, prefix: np.ndarray,
                           secrets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Token ids of every ``prefix + secret`` candidate, grouped by token layout.

    Returns a list of ``(positions int [m], members int [n], ids int32 [n, L])``: the token
    positions covering a secret nucleotide, the candidates (rows of ``secrets``) of the group and
    their token ids. Character and k-mer tokenizers split every N-free candidate at the same
    places, so their ids are built in one vectorised pass from the token spans; BPE may split
    candidates differently and is encoded one candidate at a time.
    """
    secrets = np.atleast_2d(np.asarray(secrets, np.uint8))
    n, k = secrets.shape
    if tokenizer.uniform_split:
        pos, enc = secret_token_positions(tokenizer, prefix, secrets[0])
        nts = enc.nucleotides.astype(np.int64)
        starts = np.cumsum(nts) - nts
        lut = _span_lookup(tokenizer)
        full = np.concatenate([np.broadcast_to(prefix, (n, prefix.shape[0])), secrets], axis=1).astype(np.int64)
        ids = np.broadcast_to(enc.ids.astype(np.int32), (n, enc.ids.shape[0])).copy()
        for t in pos.tolist():
            width = int(nts[t])
            span = full[:, starts[t]:starts[t] + width]
            code = span @ (4 ** np.arange(width - 1, -1, -1, dtype=np.int64))
            table = lut.get(width)
            if table is None:
                raise ConfigError(f"tokenizer {tokenizer.name!r} has no tokens of {width} nucleotides")
            ids[:, t] = table[code]
        return [(pos, np.arange(n), ids)]
    groups: dict[tuple[int, ...], tuple[np.ndarray, list[int], list[np.ndarray]]] = {}
    for j in range(n):
        pos, enc = secret_token_positions(tokenizer, prefix, secrets[j])
        key = (int(enc.ids.shape[0]), *pos.tolist())
        g = groups.setdefault(key, (pos, [], []))
        g[1].append(j)
        g[2].append(enc.ids.astype(np.int32))
    return [(pos, np.asarray(mem), np.stack(ids)) for pos, mem, ids in groups.values()]


def _span_lookup(tokenizer: Any) -> dict[int, np.ndarray]:
    """Per token width ``w``: int32 ``[4^w]`` id of the token spelling each base-4 code (-1: none)."""
    tables: dict[int, np.ndarray] = {}
    for tid, s in enumerate(token_strings(tokenizer)):
        if s is None:
            continue
        w = len(s)
        if w not in tables:
            tables[w] = np.full(4 ** w, -1, np.int32)
        tables[w][codes_to_index(as_codes(s))] = tid
    return tables


def _pll_rows_fn(model: Any) -> Any:
    """Jitted ``(params, ids [N, L], att [N, L], pos [N]) -> log p [N]`` of ``ids[n, pos[n]]`` with
    that position replaced by the mask token."""
    from flax import nnx

    graphdef, _ = nnx.split(model.module)
    mask_id = int(model.tokenizer.mask_id)

    def make():
        def rows(params, ids, att, pos):
            m = nnx.merge(graphdef, params)
            r = jnp.arange(ids.shape[0])
            target = ids[r, pos]
            x = ids.at[r, pos].set(mask_id)
            logits = m(x, att).astype(jnp.float32)
            return jax.nn.log_softmax(logits[r, pos], axis=-1)[r, target]

        return jax.jit(rows)

    return jitcache.cached(("pll-secret-rows", graphdef, mask_id), make)


def masked_candidate_pll(model: Any, prefix: str | np.ndarray, k: int, batch_size: int = 1024,
                         candidates: np.ndarray | None = None) -> np.ndarray:
    """PLL of the secret tokens of every candidate ``prefix + secret`` under a masked LM.

    Args:
      model: a loaded masked LM (with a tokenizer that has a mask token).
      prefix: the canary's prefix (DNA string or uint8 codes).
      k: secret length in nucleotides.
      batch_size: rows (candidate x masked position) per forward pass.
      candidates: optional int ``[n]`` base-4 indices to score instead of all ``4^k``.

    Returns:
      float32 ``[n]`` (``[4^k]`` by default, indexed by base-4 code): the sum over the tokens
      covering a secret nucleotide of ``log p(token | sequence with that token masked)``.
    """
    return masked_candidate_pll_many(model, [prefix], k, batch_size=batch_size, candidates=candidates)[0]


def masked_candidate_pll_many(model: Any, prefixes: Sequence[str | np.ndarray], k: int, batch_size: int = 1024,
                              candidates: np.ndarray | None = None,
                              on_candidates: Callable[[int], None] | None = None) -> np.ndarray:
    """:func:`masked_candidate_pll` of several canaries in the same forward passes: the
    (canary, candidate) pairs are tokenized :data:`CANDIDATE_CHUNK` at a time and their rows
    (pair x masked position) fill batches across canary boundaries.

    Returns float32 ``[len(prefixes), n]``; ``on_candidates(m)`` is called after every chunk
    with the pairs it scored.
    """
    if model.objective != "masked":
        raise ConfigError(f"{model.family} is causal; use causal_candidate_logprobs")
    tok = model.tokenizer
    if tok.mask_id is None:
        raise ConfigError(f"tokenizer {tok.name!r} has no mask token")
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"exact exposure enumerates 4^k candidates; k must be in 1..{MAX_K} (got {k})")
    from glmjax.engine.batching import padding_policy

    codes = [as_codes(p) for p in prefixes]
    idx = np.arange(4 ** k, dtype=np.int64) if candidates is None else np.asarray(candidates, np.int64)
    n = int(idx.shape[0])
    # families with an attention mask take right-padded rows, so every layout shares one shape
    pad_rows = padding_policy(model.spec) == "right"
    fn = _pll_rows_fn(model)
    params = model.state
    out = np.zeros(len(codes) * n, np.float64)
    total = len(codes) * n
    for lo in range(0, total, CANDIDATE_CHUNK):
        hi = min(lo + CANDIDATE_CHUNK, total)
        rows: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for c in range(lo // n, (hi - 1) // n + 1):
            sel = np.arange(max(lo, c * n), min(hi, (c + 1) * n)) - c * n
            for pos, members, ids in candidate_token_groups(tok, codes[c], index_to_codes(idx[sel], k)):
                m = pos.shape[0]
                if m == 0:
                    continue
                rows.setdefault(ids.shape[1], []).append(
                    (np.repeat(ids, m, axis=0), np.tile(pos.astype(np.int32), members.shape[0]),
                     np.repeat(c * n + sel[members], m)))
        if pad_rows and len(rows) > 1:
            width = max(rows)
            merged = []
            for length, parts in rows.items():
                for ids, pos, owner in parts:
                    padded = np.full((ids.shape[0], width), tok.pad_id, np.int32)
                    padded[:, :length] = ids
                    merged.append((padded, pos, owner))
            rows = {width: merged}
        for parts in rows.values():
            ids = np.concatenate([p[0] for p in parts])
            pos = np.concatenate([p[1] for p in parts])
            owner = np.concatenate([p[2] for p in parts])
            valid = ids != tok.pad_id if pad_rows else np.ones(ids.shape, bool)
            _score_rows(fn, params, ids, valid, pos, owner, out, batch_size)
        if on_candidates is not None:
            on_candidates(hi - lo)
    return out.reshape(len(codes), n).astype(np.float32)


def _score_rows(fn: Any, params: Any, ids: np.ndarray, att: np.ndarray, pos: np.ndarray, owner: np.ndarray,
                out: np.ndarray, batch_size: int) -> None:
    """Add the masked log p of rows ``(ids [R, L], att [R, L], pos [R])`` to ``out[owner]``, in
    batches padded to a fixed row count (a power of two up to ``batch_size``)."""
    total = ids.shape[0]
    rows = max(1, min(batch_size, 1 << max(total - 1, 0).bit_length()))
    for lo in range(0, total, rows):
        hi = min(lo + rows, total)
        b_ids = np.zeros((rows, ids.shape[1]), np.int32)
        b_att = np.ones((rows, ids.shape[1]), bool)
        b_pos = np.zeros(rows, np.int32)
        b_ids[: hi - lo], b_att[: hi - lo], b_pos[: hi - lo] = ids[lo:hi], att[lo:hi], pos[lo:hi]
        lp = np.asarray(fn(params, jnp.asarray(b_ids), jnp.asarray(b_att), jnp.asarray(b_pos)))
        np.add.at(out, owner[lo:hi], lp[: hi - lo].astype(np.float64))


# ------------------------------------------------------------------------------------------------
# Rank and exposure


def rank_of(logp: np.ndarray, index: int) -> int:
    """Rank of candidate ``index`` (1 = most likely): 1 + the number of candidates with a strictly
    higher score (ties resolved in the candidate's favour, as :mod:`glmjax.audit.exposure`)."""
    logp = np.asarray(logp)
    return int(np.count_nonzero(logp > logp[index])) + 1


def exposure_of_scores(logp: np.ndarray, index: int) -> tuple[int, float]:
    """``(rank, exposure in bits)`` of candidate ``index`` among all candidates' ``logp`` (higher =
    more likely), through :func:`glmjax.audit.exposure.exact_exposure` (log-perplexity = -logp)."""
    from glmjax.audit import exposure

    nll = -np.asarray(logp, np.float64)
    expo, rank = exposure.exact_exposure(nll[index:index + 1], nll)
    return int(rank[0]), float(expo[0])


def tf_privacy_exposure(logp: np.ndarray, index: int) -> float:
    """Exposure in TF Privacy's convention: the other candidates are the references and ties
    count against the canary, log2(R - 1) - log2(1 + #{others at least as likely})
    (:func:`glmjax.audit.exposure.exact_exposure` with ``convention="tf_privacy"``)."""
    lp = np.asarray(logp)
    at_least = int(np.count_nonzero(lp >= lp[index]))  # the canary itself included
    return float(np.log2(lp.size - 1) - np.log2(at_least))


@dataclass
class ExactExposure:
    """Exact exposure of one canary.

    ``logp``: float32 ``[4^k]`` candidate scores (natural log; ``mode`` says which: ``causal-exact``
    = log p(secret | prefix), ``pll-secret`` = PLL of the secret tokens). ``secret`` is carried for
    the caller and never shown by :meth:`to_dict` unless ``reveal``.
    """

    canary_id: str
    repetitions: int
    k: int
    secret: str
    secret_index: int
    rank: int
    exposure: float
    secret_logp: float
    max_logp: float
    mode: str
    seconds: float
    logp: np.ndarray = field(repr=False)
    stats: TrieStats | None = None
    exposure_tf_privacy: float = math.nan  # :func:`tf_privacy_exposure` of the same scores

    def to_dict(self, reveal: bool = False) -> dict[str, Any]:
        """JSON-ready summary (no candidate array; the secret only when ``reveal``)."""
        d = {"id": self.canary_id, "repetitions": self.repetitions, "k": self.k,
             "candidates": int(4 ** self.k), "rank": self.rank, "exposure_bits": self.exposure,
             "exposure_tf_privacy_bits": self.exposure_tf_privacy,
             "max_exposure_bits": 2.0 * self.k, "secret_logp": self.secret_logp, "max_logp": self.max_logp,
             "mode": self.mode, "seconds": self.seconds}
        if self.stats is not None:
            d["trie"] = {"decode_rows": self.stats.decode_rows, "block": self.stats.block,
                         "bytes_per_node": self.stats.bytes_per_node, "calls": self.stats.calls}
        if reveal:
            d["secret"] = self.secret
        return d


def exact_exposure(model: Any, prefix: str | np.ndarray, secret: str | np.ndarray, canary_id: str = "",
                   repetitions: int = 0, memory_limit: int | None = None,
                   batch_size: int = 1024, block: int | None = None) -> ExactExposure:
    """Exact exposure of one canary (``prefix``, ``secret``) under ``model`` (causal: trie walk;
    masked: PLL of the secret tokens over all candidates); ``block`` as in
    :func:`causal_candidate_logprobs`."""
    t0 = time.perf_counter()
    secret_codes = as_codes(secret)
    k = int(secret_codes.shape[0])
    if k == 0:
        raise CanaryError(f"canary {canary_id or '?'} has an empty secret")
    index = codes_to_index(secret_codes)
    stats = None
    if model.objective == "causal":
        logp, stats = causal_candidate_logprobs(model, prefix, k, memory_limit=memory_limit, block=block)
        mode = "causal-exact"
    else:
        logp = masked_candidate_pll(model, prefix, k, batch_size=batch_size)
        mode = "pll-secret"
    rank, expo = exposure_of_scores(logp, index)
    from glmjax import alphabet

    return ExactExposure(canary_id=canary_id, repetitions=int(repetitions), k=k,
                         secret=alphabet.decode(secret_codes), secret_index=index, rank=rank, exposure=expo,
                         secret_logp=float(logp[index]), max_logp=float(logp.max()), mode=mode,
                         seconds=time.perf_counter() - t0, logp=logp, stats=stats,
                         exposure_tf_privacy=tf_privacy_exposure(logp, index))


def exact_exposures(model: Any, canaries: list[dict[str, Any]], memory_limit: int | None = None,
                    batch_size: int = 1024, keep_scores: bool = False, share_prefix: bool = True,
                    canaries_per_call: int | None = None,
                    on_progress: Callable[[int], None] | None = None,
                    on_candidates: Callable[[int], None] | None = None) -> list[ExactExposure]:
    """Exact exposure of every manifest entry (dicts with ``id``, ``prefix``, ``secret``,
    ``repetitions``), in the order given.

    All canaries with the same secret length are done together: causal families walk their tries
    in the same calls (:func:`causal_candidate_logprobs_many`), masked families score their
    candidates in the same forward passes (:func:`masked_candidate_pll_many`). Each result's
    ``seconds`` is its share of its group's time and ``stats`` the group's. ``keep_scores=False``
    drops the ``4^k`` arrays after ranking; ``on_progress(n)`` is called with the number of
    canaries finished so far, ``on_candidates(m)`` with the candidates scored since its last call.
    """
    from glmjax import alphabet

    codes = [as_codes(e["secret"]) for e in canaries]
    for e, c in zip(canaries, codes, strict=True):
        if c.shape[0] == 0:
            raise CanaryError(f"canary {e.get('id') or '?'} has an empty secret")
    indices = [codes_to_index(c) for c in codes]
    out: list[ExactExposure | None] = [None] * len(canaries)
    by_k: dict[int, list[int]] = {}
    for i, c in enumerate(codes):
        by_k.setdefault(int(c.shape[0]), []).append(i)
    finished = 0

    def finish(i: int, logp: np.ndarray, mode: str, seconds: float, stats: TrieStats | None) -> None:
        e = canaries[i]
        rank, expo = exposure_of_scores(logp, indices[i])
        out[i] = ExactExposure(canary_id=str(e.get("id", "")), repetitions=int(e.get("repetitions", 0)),
                               k=int(codes[i].shape[0]), secret=alphabet.decode(codes[i]), secret_index=indices[i],
                               rank=rank, exposure=expo, secret_logp=float(logp[indices[i]]),
                               max_logp=float(logp.max()), mode=mode, seconds=seconds,
                               logp=logp if keep_scores else np.empty(0, np.float32), stats=stats,
                               exposure_tf_privacy=tf_privacy_exposure(logp, indices[i]))

    for k, members in sorted(by_k.items()):
        base = finished
        cb = None if on_progress is None else (lambda n, b=base: on_progress(b + n))
        prefixes = [canaries[i]["prefix"] for i in members]
        t0 = time.perf_counter()
        if model.objective == "causal":
            logp, stats = causal_candidate_logprobs_many(model, prefixes, k, memory_limit=memory_limit,
                                                         share_prefix=share_prefix,
                                                         canaries_per_call=canaries_per_call, on_batch=cb,
                                                         on_candidates=on_candidates)
            mode = "causal-exact"
        else:
            logp = masked_candidate_pll_many(model, prefixes, k, batch_size=batch_size,
                                             on_candidates=on_candidates)
            stats, mode = None, "pll-secret"
            if cb is not None:
                cb(len(members))
        seconds = time.perf_counter() - t0
        for j, i in enumerate(members):
            finish(i, logp[j], mode, seconds / len(members), stats)
        finished += len(members)
    return [r for r in out if r is not None]


def summarise_exposures(results: list[ExactExposure]) -> list[dict[str, Any]]:
    """Mean exact exposure (bits), exposure / 2k and rank-1 rate per repetition count
    (:func:`glmjax.audit.exposure.summarise_by_repetition`); no secrets."""
    from glmjax.audit.exposure import summarise_by_repetition

    if not results:
        return []
    reps = np.asarray([r.repetitions for r in results], np.int64)
    return summarise_by_repetition(reps, {
        "exposure": np.asarray([r.exposure for r in results]),
        "exposure_fraction": np.asarray([r.exposure / (2.0 * r.k) for r in results]),
        "rank1": np.asarray([float(r.rank == 1) for r in results]),
    })
