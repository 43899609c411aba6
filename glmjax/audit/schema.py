"""report.json schema ("glmjax.AuditReport", version 3) and its validator.

The schema is documented field by field in docs/report-schema.md. :func:`validate_report` checks
required keys, types, ranges and the cross-field rules (the band matches the worst case, the worst
case is the maximum of the vectors, every vector that was run has its section, no raw secret
unless the report was written with ``reveal``). Readers should check ``schema`` and
``schema_version`` first; a new major layout gets a new version number (version 2 split
``detection`` into ``windows`` and ``canaries``, each against its own null distribution;
version 3 dropped the per-canary ``sha256`` of the secret, which a brute force over the 4^k
candidates inverts).
"""

from __future__ import annotations

import math
import re
from typing import Any

from glmjax.audit.perplexity import MODES, NULL_WINDOWS, NULLS
from glmjax.audit.risk import VECTORS, band
from glmjax.errors import GlmjaxError

SCHEMA = "glmjax.AuditReport"
SCHEMA_VERSION = 3
REQUIRED_FPRS = ("0.001", "0.01")
BANDS = ("low", "medium", "high")


class ReportSchemaError(GlmjaxError):
    """A report does not follow the glmjax.AuditReport schema."""


def _fail(path: str, what: str) -> None:
    raise ReportSchemaError(f"report.json: {path}: {what}")


def _get(d: Any, key: str, path: str) -> Any:
    if not isinstance(d, dict):
        _fail(path, "must be an object")
    if key not in d:
        _fail(f"{path}.{key}" if path else key, "is required but missing")
    return d[key]


def _num(x: Any, path: str, lo: float = -math.inf, hi: float = math.inf, nullable: bool = False) -> None:
    if x is None and nullable:
        return
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        _fail(path, f"must be a number, got {type(x).__name__}")
    if not (lo <= x <= hi):
        _fail(path, f"must lie in [{lo}, {hi}], got {x}")


def _int(x: Any, path: str, lo: int = 0) -> None:
    if isinstance(x, bool) or not isinstance(x, int) or x < lo:
        _fail(path, f"must be an integer >= {lo}, got {x!r}")


def _str(x: Any, path: str, pattern: re.Pattern | None = None, choices: tuple = ()) -> None:
    if not isinstance(x, str):
        _fail(path, f"must be a string, got {type(x).__name__}")
    if pattern is not None and not pattern.match(x):
        _fail(path, f"has an invalid format: {x!r}")
    if choices and x not in choices:
        _fail(path, f"must be one of {', '.join(choices)}, got {x!r}")


def _obj(x: Any, path: str) -> dict:
    if not isinstance(x, dict):
        _fail(path, f"must be an object, got {type(x).__name__}")
    return x


def _interval(x: Any, path: str, lo: float = -math.inf, hi: float = math.inf) -> None:
    """A [low, high] pair of numbers (or of nulls when no interval was computed)."""
    if not isinstance(x, list) or len(x) != 2:
        _fail(path, "must be a [low, high] pair")
    if x[0] is None and x[1] is None:
        return
    _num(x[0], f"{path}[0]", lo, hi)
    _num(x[1], f"{path}[1]", lo, hi)
    if x[0] > x[1]:
        _fail(path, f"low {x[0]} exceeds high {x[1]}")


def _validate_risk(r: dict) -> None:
    _obj(r, "risk")
    vectors = _obj(_get(r, "vectors", "risk"), "risk.vectors")
    if not vectors:
        _fail("risk.vectors", "must hold at least one vector")
    for k, v in vectors.items():
        _str(k, f"risk.vectors key {k!r}", choices=VECTORS)
        _num(v, f"risk.vectors.{k}", 0.0, 1.0)
    wc = _get(r, "worst_case", "risk")
    _num(wc, "risk.worst_case", 0.0, 1.0)
    if abs(wc - max(vectors.values())) > 1e-12:
        _fail("risk.worst_case", f"{wc} is not the maximum of risk.vectors ({max(vectors.values())})")
    b = _get(r, "band", "risk")
    _str(b, "risk.band", choices=BANDS)
    want = band(wc)
    if b != want:
        _fail("risk.band", f"{b!r} does not match worst_case {wc} (expected {want!r})")
    wv = _get(r, "worst_vector", "risk")
    _str(wv, "risk.worst_vector", choices=tuple(vectors))
    intervals = {"worst_case_ci": r.get("worst_case_ci")}
    intervals.update({f"vectors_ci.{k}": v for k, v in (r.get("vectors_ci") or {}).items()})
    for key, ci in intervals.items():
        if ci is None:
            continue
        if not isinstance(ci, list) or len(ci) != 2:
            _fail(f"risk.{key}", "must be [low, high]")
        _num(ci[0], f"risk.{key}[0]", 0.0, 1.0)
        _num(ci[1], f"risk.{key}[1]", ci[0], 1.0)
    for k in r.get("vectors_ci") or {}:
        if k not in vectors:
            _fail(f"risk.vectors_ci.{k}", "names a vector that was not run")
    warnings = r.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        _fail("risk.warnings", "must be a list of strings")


def _validate_canary(c: Any, i: int, reveal: bool) -> None:
    p = f"canaries[{i}]"
    _obj(c, p)
    _str(_get(c, "id", p), f"{p}.id")
    if "sha256" in c:
        _fail(f"{p}.sha256", "a hash of a secret of a few bases is as good as the secret; reports never carry one")
    _int(_get(c, "repetitions", p), f"{p}.repetitions")
    n = _get(c, "n_candidates", p)
    _int(n, f"{p}.n_candidates", 1)
    top = math.log2(n) + 1e-9
    _num(_get(c, "exposure", p), f"{p}.exposure", 0.0, top)
    _interval(_get(c, "exposure_ci", p), f"{p}.exposure_ci", 0.0, top)
    if not isinstance(_get(c, "extracted", p), bool):
        _fail(f"{p}.extracted", "must be true or false")
    _str(_get(c, "exposure_method", p), f"{p}.exposure_method", choices=("exact", "skewnorm"))
    if "secret" in c and not reveal:
        _fail(f"{p}.secret", "raw secrets are only allowed in reports written with reveal")


def _validate_attack(a: Any, name: str) -> None:
    p = f"mia.attacks.{name}"
    _obj(a, p)
    _num(_get(a, "auc", p), f"{p}.auc", 0.0, 1.0)
    _interval(_get(a, "auc_ci", p), f"{p}.auc_ci", 0.0, 1.0)
    tpr = _obj(_get(a, "tpr_at_fpr", p), f"{p}.tpr_at_fpr")
    for f in REQUIRED_FPRS:
        _num(_get(tpr, f, f"{p}.tpr_at_fpr"), f"{p}.tpr_at_fpr.{f}", 0.0, 1.0)
    _num(_get(a, "balanced_accuracy", p), f"{p}.balanced_accuracy", 0.5, 1.0)
    _num(_get(a, "advantage", p), f"{p}.advantage", 0.0, 1.0)
    _int(_get(a, "n_members", p), f"{p}.n_members", 1)
    _int(_get(a, "n_nonmembers", p), f"{p}.n_nonmembers", 1)


def validate_report(report: Any) -> None:
    """Check a report dict against the glmjax.AuditReport schema (version 2).

    Raises:
      ReportSchemaError: naming the first offending field and what is wrong with it.
    """
    _obj(report, "report")
    schema = _get(report, "schema", "")
    if schema != SCHEMA:
        _fail("schema", f"must be {SCHEMA!r}, got {schema!r}")
    version = _get(report, "schema_version", "")
    if version != SCHEMA_VERSION:
        _fail("schema_version", f"this reader understands version {SCHEMA_VERSION}, got {version!r}")
    _str(_get(report, "created", ""), "created")
    reveal = _get(report, "reveal", "")
    if not isinstance(reveal, bool):
        _fail("reveal", "must be true or false")
    _obj(_get(report, "config", ""), "config")
    prov = _obj(_get(report, "provenance", ""), "provenance")
    _str(_get(prov, "glmjax_version", "provenance"), "provenance.glmjax_version")
    scoring = _obj(_get(report, "scoring", ""), "scoring")
    _str(_get(scoring, "mode", "scoring"), "scoring.mode", choices=MODES)
    _obj(_get(scoring, "mode_params", "scoring"), "scoring.mode_params")
    _validate_risk(_get(report, "risk", ""))
    vectors = report["risk"]["vectors"]

    canaries = _get(report, "canaries", "")
    if not isinstance(canaries, list):
        _fail("canaries", "must be a list")
    for i, c in enumerate(canaries):
        _validate_canary(c, i, reveal)
    if "extraction" in vectors and not canaries:
        _fail("canaries", "risk.vectors has extraction but no canary is listed")

    mia = _get(report, "mia", "")
    if mia is not None:
        _obj(mia, "mia")
        attacks = _obj(_get(mia, "attacks", "mia"), "mia.attacks")
        if not attacks:
            _fail("mia.attacks", "must hold at least one attack")
        for name, a in attacks.items():
            _validate_attack(a, name)
    elif "mia" in vectors:
        _fail("mia", "risk.vectors has mia but the mia section is null")

    if "timings" in report:
        _validate_timings(report)
    if "exposure_plan" in report:
        _validate_exposure_plan(report["exposure_plan"])

    det = _get(report, "detection", "")
    if det is not None:
        _obj(det, "detection")
        _num(_get(det, "fpr_target", "detection"), "detection.fpr_target", 0.0, 1.0)
        present = 0
        for key in ("windows", "canaries"):
            sub = _get(det, key, "detection")
            if sub is not None:
                present += 1
                _validate_detection(sub, f"detection.{key}", "log_perplexity",
                                    (NULL_WINDOWS,) if key == "windows" else NULLS)
        if not present:
            _fail("detection", "must hold a windows or a canaries result (or be null)")
    elif "detection" in vectors:
        _fail("detection", "risk.vectors has detection but the detection section is null")


def _validate_timings(report: dict) -> None:
    """``timings``: seconds per stage (non-negative), adding up to ``seconds``."""
    t = _obj(report["timings"], "timings")
    for name, sec in t.items():
        _num(sec, f"timings.{name}", 0.0)
    total = _get(report, "seconds", "")
    _num(total, "seconds", 0.0)
    # each stage is rounded to the millisecond, and so is their sum
    if abs(sum(t.values()) - total) > 1e-3 * (len(t) + 1):
        _fail("timings", f"the stages add up to {sum(t.values()):.3f} s, not seconds = {total}")


def _validate_exposure_plan(plan: Any) -> None:
    """``exposure_plan``: one row per secret length, exact or sampled, with the reason."""
    if not isinstance(plan, list):
        _fail("exposure_plan", "must be a list")
    for i, row in enumerate(plan):
        p = f"exposure_plan[{i}]"
        _obj(row, p)
        _int(_get(row, "k", p), f"{p}.k", 1)
        _int(_get(row, "canaries", p), f"{p}.canaries", 1)
        _int(_get(row, "candidates", p), f"{p}.candidates", 1)
        _num(_get(row, "estimated_seconds", p), f"{p}.estimated_seconds", 0.0, nullable=True)
        _str(_get(row, "method", p), f"{p}.method", choices=("exact", "sampled"))
        _str(_get(row, "reason", p), f"{p}.reason")
        if "seconds" in row:
            _num(row["seconds"], f"{p}.seconds", 0.0)


def _validate_detection(d: Any, p: str, statistic: str, nulls: tuple[str, ...]) -> None:
    """One DetectionResult dict (and its reference-ratio result, which shares its null)."""
    _obj(d, p)
    _str(_get(d, "mode", p), f"{p}.mode", choices=MODES)
    _str(_get(d, "statistic", p), f"{p}.statistic", choices=(statistic,))
    null = _get(d, "null", p)
    _str(null, f"{p}.null", choices=nulls)
    fpr = _get(d, "fpr_target", p)
    _num(fpr, f"{p}.fpr_target", 0.0, 1.0)
    _num(_get(d, "realised_fpr", p), f"{p}.realised_fpr", 0.0, fpr + 1e-12)
    _num(_get(d, "expected_fpr", p), f"{p}.expected_fpr", 0.0, 1.0)
    _num(_get(d, "threshold", p), f"{p}.threshold", nullable=True)
    _int(_get(d, "n_nonmembers", p), f"{p}.n_nonmembers", 1)
    groups = _obj(_get(d, "groups", p), f"{p}.groups")
    if not groups:
        _fail(f"{p}.groups", "must hold at least one query group")
    for name, g in groups.items():
        gp = f"{p}.groups.{name}"
        _int(_get(g, "n", gp), f"{gp}.n", 1)
        _num(_get(g, "tpr", gp), f"{gp}.tpr", 0.0, 1.0)
        rows = _get(g, "by_repetition", gp)
        if not isinstance(rows, list):
            _fail(f"{gp}.by_repetition", "must be a list")
        for i, r in enumerate(rows):
            # rows are planted canaries only: the never-planted ones are the null, not a query
            _int(_get(r, "repetitions", f"{gp}.by_repetition[{i}]"), f"{gp}.by_repetition[{i}].repetitions", 1)
            _num(_get(r, "tpr", f"{gp}.by_repetition[{i}]"), f"{gp}.by_repetition[{i}].tpr", 0.0, 1.0)
    ref = _get(d, "reference", p)
    if ref is not None:
        if statistic != "log_perplexity":
            _fail(f"{p}.reference", "a reference-ratio result has no reference of its own")
        _validate_detection(ref, f"{p}.reference", "log_perplexity_ratio", (null,))
