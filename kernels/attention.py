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
              implementation: str | None = None) -> jax.Array:
    """Multi-head attention over ``[B, L, H, D]`` inputs; returns ``[B, L, H, D]``.

    Args:
      q, k, v: queries/keys/values, ``[B, Lq, H, D]`` / ``[B, Lk, H, D]``.
      key_mask: bool ``[B, Lk]``; False keys receive no attention (padding).
      bias: additive logits bias broadcastable to ``[B, H, Lq, Lk]`` (e.g. ALiBi), in fp32 or the
        input dtype.
      causal: apply a causal mask (query i attends to keys <= i).
      scale: logits scale (default ``D ** -0.5``).
      implementation: force ``"xla"`` or ``"cudnn"``; default chooses by backend and dtype.
    """
    impl = choose_implementation(q.dtype, implementation)
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :].astype(bool)
    if bias is not None:
        bias = bias.astype(q.dtype)
    if impl == "cudnn" and mask is not None:
        # cuDNN takes the padding mask as per-sequence lengths only for right padding; a boolean
        # mask is folded into the bias instead, which cuDNN supports for every layout.
        neg = jnp.asarray(jnp.finfo(q.dtype).min / 2, q.dtype)
        mbias = jnp.where(mask, jnp.zeros((), q.dtype), neg)
        bias = mbias if bias is None else bias + mbias
        mask = None
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=causal,
                                        implementation=impl)
