"""Compiled hot paths of glmjax (shipped as ``glmjax.kernels``): pure functions of arrays only."""
