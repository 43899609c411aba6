"""``scripts/compare_attacks.py --smoke``: the audit end to end with shadow models (LiRA, RMIA)
next to every other attack, through the CLI commands a user runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_attack_side_by_side_with_shadows(tmp_path):
    md = tmp_path / "table.md"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_attacks.py"), "--smoke", "--work",
                        str(tmp_path / "w"), "--md-out", str(md)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    attacks = out["attacks"]
    expected = {"loss", "zlib", "kmer3_entropy", "mink_10", "mink_20", "minkpp_10", "minkpp_20", "dcpdd",
                "neighbourhood", "recall", "gradnorm", "lira_online", "lira_offline", "rmia"}
    assert set(attacks) == expected
    assert set(out["skipped"]) == {"reference", "extraction", "exposure"}
    for a in attacks.values():
        lo, hi = a["auc_ci"]
        assert 0.0 <= lo <= hi <= 1.0 and a["hull_auc"] >= a["auc"] - 1e-12
    assert "shadows" in out["timings"] and out["audit_command"].count("--shadows") == 1
    rows = md.read_text().splitlines()
    assert len(rows) == 2 + len(expected) and rows[0].startswith("| attack | AUC |")
    # every attack's per-window scores, the shadow-based ones included, are kept and reproduce the AUCs
    import numpy as np
    import pytest

    from glmjax.audit.metrics import roc_auc
    from glmjax.audit.scoretable import MembershipScores

    with MembershipScores(tmp_path / "w" / "report" / "scores" / "membership.h5") as m:
        assert set(m.attacks) == expected
        member = np.asarray(m.column("member"), bool)
        for name in ("lira_online", "lira_offline", "rmia", "recall", "gradnorm", "dcpdd"):
            s = np.asarray(m.column(name))
            keep = np.isfinite(s)
            assert roc_auc(member[keep], s[keep]) == pytest.approx(attacks[name]["auc"], abs=1e-12), name
