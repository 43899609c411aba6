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


def test_top_level_kernels_is_not_the_checkout_folder_under_pytest():
    spec = importlib.util.find_spec("kernels")
    if spec is not None and spec.origin:
        assert not Path(spec.origin).resolve().is_relative_to(ROOT / "kernels")


def test_script_path_setup_keeps_glmjax_kernels_and_foreign_kernels_apart(tmp_path):
    """A script's path setup (the checkout appended) still imports glmjax.kernels from the checkout,
    while a package named ``kernels`` elsewhere on the path wins the top-level name."""
    foreign = tmp_path / "site" / "kernels"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("MARK = 'foreign'\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); sys.path.append({str(ROOT)!r});"
            "import kernels, glmjax.kernels as gk; print(kernels.MARK, hasattr(gk, '__path__'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["foreign", "True"]
