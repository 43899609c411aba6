"""The README's "Audit your own model" recipe, run exactly as written (the commands between the
recipe markers) on the bundled lambda-phage genome as ``genome.fa.gz``; the report it writes is
complete and valid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from glmjax.audit.schema import validate_report

ROOT = Path(__file__).resolve().parents[1]


def recipe_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- recipe -->", 1)[1].split("<!-- /recipe -->", 1)[0]
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("```")]


def test_readme_recipe_runs_as_written(tmp_path):
    cmds = recipe_commands()
    assert len(cmds) == 6 and all(c.startswith("glmjax ") for c in cmds)
    shutil.copy(resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz"), tmp_path / "genome.fa.gz")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "GLMJAX_QUIET": "1"}
    for cmd in cmds:
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    validate_report(rep)
    manifest = json.loads((tmp_path / "planted.canaries.json").read_text())
    assert len(rep["canaries"]) == len(manifest["canaries"]) == 116  # 100 canaries + 16 controls
    assert {c["repetitions"] for c in rep["canaries"]} == {0, 1, 4, 16, 64}
    assert rep["detection"]["canaries"]["null"] == "control canaries"
    assert set(rep["risk"]["vectors"]) == {"detection", "extraction", "mia"}
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
