"""Training objectives: causal next-token cross-entropy and masked-LM (15 %, 80/10/10).

Pure functions of arrays, used inside the jitted train step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_lm_loss(logits: jax.Array, ids: jax.Array, attention: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy (nats) over real positions.

    Args:
      logits: [B, L, V] (any float dtype; the log-softmax runs in fp32).
      ids: int [B, L] input ids.
      attention: bool [B, L], True on real (non-pad) tokens.

    Returns:
      (sum of token losses, number of predicted tokens); token t is predicted from position t-1
      when both are real tokens.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = ids[:, 1:]
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    w = (attention[:, 1:] & attention[:, :-1]).astype(jnp.float32)
    return (nll * w).sum(), w.sum()


def mlm_corrupt(rng: jax.Array, ids: jax.Array, maskable: jax.Array, mask_id: int,
                replacement_ids: jax.Array, mask_prob: float = 0.15) -> tuple[jax.Array, jax.Array]:
    """BERT-style corruption: select ``mask_prob`` of the maskable tokens; of those 80 % become
    ``mask_id``, 10 % a random token from ``replacement_ids``, 10 % stay unchanged.

    Args:
      rng: PRNG key.
      ids: int [B, L]; maskable: bool [B, L] (nucleotide tokens; never specials or pads).
      replacement_ids: int [R] token ids random replacements are drawn from.

    Returns:
      (corrupted ids [B, L], selected bool [B, L]: positions whose original token is predicted).
    """
    k1, k2, k3 = jax.random.split(rng, 3)
    selected = (jax.random.uniform(k1, ids.shape) < mask_prob) & maskable
    action = jax.random.uniform(k2, ids.shape)
    rand_tok = replacement_ids[jax.random.randint(k3, ids.shape, 0, replacement_ids.shape[0])]
    out = jnp.where(selected & (action < 0.8), mask_id, ids)
    out = jnp.where(selected & (action >= 0.8) & (action < 0.9), rand_tok, out)
    return out.astype(ids.dtype), selected


def masked_lm_loss(logits: jax.Array, targets: jax.Array, selected: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy (nats) of the original tokens at the selected positions: (sum, count)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    w = selected.astype(jnp.float32)
    return (nll * w).sum(), w.sum()
