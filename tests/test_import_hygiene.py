"""The checkout's top-level kernels/ folder (installed as glmjax.kernels) must never shadow another
package named ``kernels``: transformers imports one, and a shadowed import breaks every test and
benchmark that loads a torch reference."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _inserts_root_first(path: Path) -> list[int]:
    """Line numbers where a script puts the repository root at the front of sys.path."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "insert"
                and ast.unparse(node.func.value) == "sys.path" and len(node.args) == 2):
            target = ast.unparse(node.args[1])
            if target in ("str(ROOT)", "str(Path(__file__).resolve().parents[1])", "ROOT"):
                bad.append(node.lineno)
    return bad


def test_no_script_puts_the_checkout_before_site_packages():
    offenders = {p.name: lines for p in sorted((ROOT / "scripts").rglob("*.py")) if (lines := _inserts_root_first(p))}
    assert offenders == {}


def test_no_test_puts_the_checkout_on_a_subprocess_path():
    import re

    pattern = re.compile(r"PYTHONPATH\W{1,4}(:|=)\s*str\(ROOT\)")   # env["PYTHONPATH"] = str(ROOT)... / {"PYTHONPATH": str(ROOT)}
    offenders = [p.name for p in sorted((ROOT / "tests").glob("*.py"))
                 if p.name != Path(__file__).name and pattern.search(p.read_text())]
    assert offenders == []
    assert pattern.search('env["PYTHONPATH"] = str(ROOT) + os.pathsep') and pattern.search('{"PYTHONPATH": str(ROOT)}')


def test_top_level_kernels_is_not_the_checkout_folder_under_pytest():
    spec = importlib.util.find_spec("kernels")
    if spec is not None and spec.origin:
        assert not Path(spec.origin).resolve().is_relative_to(ROOT / "kernels")


def test_scripts_use_the_installed_package(tmp_path):
    """Scripts put nothing of the checkout but scripts/ on sys.path: glmjax (and glmjax.kernels, the
    checkout's kernels/ folder) come from the installed package, and another package named
    ``kernels`` earlier on the path keeps its name."""
    for p in sorted((ROOT / "scripts").rglob("*.py")):
        text = p.read_text()
        assert "sys.path.append(str(ROOT))" not in text and "parents[1]))" not in text, p.name
    foreign = tmp_path / "site" / "kernels"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("MARK = 'foreign'\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r});"
            "import kernels, glmjax.kernels.logprob as lp; print(kernels.MARK, lp.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["foreign", "glmjax.kernels.logprob"]
