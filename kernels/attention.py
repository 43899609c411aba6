"""Scaled dot-product attention: cuDNN flash attention on GPU (bf16/fp16), XLA everywhere else.

``jax.nn.dot_product_attention`` defaults to the XLA implementation even on GPU; glmjax asks for
``implementation="cudnn"`` explicitly when the backend is GPU and the inputs are half precision,
and falls back to XLA otherwise (CPU, TPU, fp32). Padding masks and additive biases (ALiBi) are
supported by both paths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def choose_implementation(dtype, requested: str | None = None) -> str:
    """``"cudnn"`` on GPU for bf16/fp16 inputs, else ``"xla"`` (or the explicitly requested one)."""
    if requested is not None:
        return requested
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, key_mask: jax.Array | None = None,
              bias: jax.Array | None = None, causal: bool = False, scale: float | None = None,
              implementation: str | None = None, key_lengths: jax.Array | None = None) -> jax.Array:
    """Multi-head attention over ``[B, L, H, D]`` inputs; returns ``[B, L, H, D]``.

    Args:
      q, k, v: queries/keys/values, ``[B, Lq, H, D]`` / ``[B, Lk, H, D]``.
      key_mask: bool ``[B, Lk]``; False keys receive no attention (padding).
      bias: additive logits bias broadcastable to ``[B, H, Lq, Lk]`` (e.g. ALiBi), in fp32 or the
        input dtype.
      causal: apply a causal mask (query i attends to keys <= i).
      scale: logits scale (default ``D ** -0.5``).
      implementation: force ``"xla"`` or ``"cudnn"``; default chooses by backend and dtype.
      key_lengths: optional int ``[B]``: the caller guarantees that ``key_mask`` is a prefix mask
        (right padding: the first ``key_lengths[b]`` keys are valid). cuDNN then masks by sequence
        length instead of an additive bias (no ``[B, 1, Lq, Lk]`` bias is read per head); the XLA
        path keeps using ``key_mask`` (or builds it from the lengths when no mask is given).
    """
    impl = choose_implementation(q.dtype, implementation)
    if implementation is None and impl == "cudnn" and (q.shape[-1] % 8 or q.shape[-1] > 128):
        impl = "xla"  # cuDNN flash attention needs a head size that is a multiple of 8, at most 128
    if key_mask is None and key_lengths is not None:
        key_mask = jnp.arange(k.shape[1])[None, :] < key_lengths[:, None]
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :].astype(bool)
    if bias is not None:
        bias = bias.astype(q.dtype)
    if impl == "cudnn":
        lengths = None
        q_lengths = None
        if key_lengths is not None:
            lengths = key_lengths.astype(jnp.int32)
            # every query is computed (as on the XLA path). Derived from the key lengths so that
            # under vmap it is batched like them: jax.nn fills an unbatched [B] array otherwise,
            # which cuDNN's batching rule cannot fold into the mapped batch.
            q_lengths = lengths * 0 + q.shape[1]
        elif mask is not None:
            # cuDNN takes the padding mask as per-sequence lengths only for right padding; a
            # general boolean mask is folded into the bias instead.
            neg = jnp.asarray(jnp.finfo(q.dtype).min / 2, q.dtype)
            mbias = jnp.where(mask, jnp.zeros((), q.dtype), neg)
            bias = mbias if bias is None else bias + mbias
        if bias is not None:
            # cuDNN requires the bias to span the full [Lq, Lk] logits (batch/head may broadcast).
            # The head axis is broadcast too: cuDNN's vmap batching rule folds the mapped axis
            # into batch x heads and mis-reshapes a bias whose head axis is 1 (vmapped ensembles).
            bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
            bias = jnp.broadcast_to(bias, (bias.shape[0], q.shape[2], q.shape[1], k.shape[1]))
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=causal,
                                            query_seq_lengths=q_lengths, key_value_seq_lengths=lengths,
                                            implementation=impl)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=causal,
                                        implementation=impl)


def prefix_shared_attention(q: jax.Array, k_prefix: jax.Array, v_prefix: jax.Array, k_suffix: jax.Array,
                            v_suffix: jax.Array, suffix_valid: jax.Array, *, scale: float | None = None) -> jax.Array:
    """One query per row attending to its prefix's keys (shared by all rows of that prefix) and to
    the row's own suffix keys (cascade attention over a shared prefix).

    Args:
      q: ``[C, M, H, D]`` queries: ``M`` rows continuing each of ``C`` prefixes.
      k_prefix, v_prefix: ``[C, T, KV, D]`` keys/values of the prefixes (read once per prefix, not
        once per row); ``H`` must be a multiple of ``KV`` (grouped-query attention).
      k_suffix, v_suffix: ``[C, M, S, KV, D]`` keys/values of each row's own suffix tokens.
      suffix_valid: bool ``[C, M, S]``: the suffix slots a row attends to.
      scale: logits scale (default ``D ** -0.5``).

    Returns:
      ``[C, M, H, D]`` in ``q``'s dtype; one softmax over the ``T + S`` keys of each row, taken in
      float32 (equal to attention over the concatenated ``[prefix, suffix]`` keys).
    """
    c, m, h, d = q.shape
    kv = k_prefix.shape[2]
    g = h // kv
    scale = d ** -0.5 if scale is None else scale
    f32 = jnp.float32
    qg = q.reshape(c, m, kv, g, d)
    sp = jnp.einsum("cmkgd,ctkd->cmkgt", qg, k_prefix, preferred_element_type=f32) * scale
    ss = jnp.einsum("cmkgd,cmskd->cmkgs", qg, k_suffix, preferred_element_type=f32) * scale
    ss = jnp.where(suffix_valid[:, :, None, None, :], ss, -jnp.inf)
    top = jnp.maximum(sp.max(axis=-1), ss.max(axis=-1))[..., None]
    ep, es = jnp.exp(sp - top), jnp.exp(ss - top)
    denom = ep.sum(axis=-1) + es.sum(axis=-1)
    o = (jnp.einsum("cmkgt,ctkd->cmkgd", ep.astype(v_prefix.dtype), v_prefix, preferred_element_type=f32)
         + jnp.einsum("cmkgs,cmskd->cmkgd", es.astype(v_suffix.dtype), v_suffix, preferred_element_type=f32))
    return (o / denom[..., None]).reshape(c, m, h, d).astype(q.dtype)
