"""docs/python.md, run exactly as written: its ``python`` blocks, in order, as one script in a
folder holding the bundled lambda-phage genome as ``genome.fa.gz``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from glmjax.audit.schema import validate_report

ROOT = Path(__file__).resolve().parents[1]


def doc_script() -> str:
    text = (ROOT / "docs" / "python.md").read_text()
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


def test_python_docs_run_as_written(tmp_path):
    script = doc_script()
    assert script.count("\n") > 40 and "run_audit(" in script
    shutil.copy(resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz"), tmp_path / "genome.fa.gz")
    (tmp_path / "doc.py").write_text(script)
    r = subprocess.run([sys.executable, "doc.py"], cwd=tmp_path, env={**os.environ, "GLMJAX_QUIET": "1"},
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    validate_report(rep)
    # what the page prints is what the report holds
    assert f"worst case {rep['risk']['worst_case']:.3f}" in r.stdout
    assert "extraction" in rep["risk"]["vectors"] and "mia" in rep["risk"]["vectors"]
    assert {c["repetitions"] for c in rep["canaries"]} == {0, 1, 4, 16, 64}
