"""Audit statistics: from per-sequence scores to attack metrics, risk and reports.

- :mod:`glmjax.audit.perplexity`: perplexity-based detection against non-members.
- :mod:`glmjax.audit.exposure`: exact and sampled (skew-normal) canary exposure.
- :mod:`glmjax.audit.mia`: membership-inference attacks (higher score = member).
- :mod:`glmjax.audit.metrics`: ROC, AUC, TPR at low FPR, bootstrap intervals, ε lower bounds.
- :mod:`glmjax.audit.risk`: per-vector risk in [0, 1] and the worst case.
- :mod:`glmjax.audit.report`: report.json, report.html and the terminal summary.
- :mod:`glmjax.audit.schema`: the report.json schema and its validator.

Submodules are imported on use so that ``import glmjax.audit`` stays light.
"""
