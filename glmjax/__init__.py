"""glmjax: memorization and privacy-leakage audits of genomic language models in JAX/Flax."""

__version__ = "0.1.0"

from glmjax.errors import GlmjaxError  # noqa: E402

__all__ = ["GlmjaxError", "__version__"]

