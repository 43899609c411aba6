"""glmjax: memorization and privacy-leakage audits of genomic language models in JAX/Flax."""

__version__ = "0.1.0"

from glmjax.errors import GlmjaxError  # noqa: E402

__all__ = ["GlmjaxError", "__version__"]


def _alias_kernels_from_checkout() -> None:
    """Make ``glmjax.kernels`` importable when glmjax runs from a source checkout that is not
    installed (installs map the top-level ``kernels/`` folder to ``glmjax.kernels`` themselves)."""
    import importlib.util
    import sys
    from pathlib import Path

    if "glmjax.kernels" in sys.modules or importlib.util.find_spec("glmjax.kernels") is not None:
        return
    init = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location("glmjax.kernels", init,
                                                      submodule_search_locations=[str(init.parent)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["glmjax.kernels"] = mod
        spec.loader.exec_module(mod)
        globals()["kernels"] = mod


_alias_kernels_from_checkout()
