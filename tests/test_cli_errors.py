"""Bad values are refused at parse time with one line and exit status 2, before any work: seeds,
counts, rates and fractions out of range or NaN; an oversized plant before it allocates; a
non-ASCII character named as the user typed it."""

from __future__ import annotations

import pytest

from glmjax import alphabet
from glmjax.cli import main
from glmjax.errors import SequenceError


@pytest.mark.parametrize("argv,option", [
    (["data", "synth", "--out", "s.h5", "--num", "5", "--length", "10", "--seed", "-1"], "--seed"),
    (["data", "synth", "--out", "s.h5", "--num", "5", "--length", "10", "--seed", "1", "--pseudocount", "nan"],
     "--pseudocount"),
    (["data", "synth", "--out", "s.h5", "--num", "0", "--length", "10", "--seed", "1"], "--num"),
    (["data", "canaries", "--out", "c.json", "--num", "2", "--prefix-len", "8", "--secret-len", "6", "--seed", "-3"],
     "--seed"),
    (["data", "split", "w.h5", "--member-fraction", "1.5", "--seed", "1"], "--member-fraction"),
    (["data", "window", "g.fa", "--out", "w.h5", "--length", "-5"], "--length"),
    (["train", "--family", "llama", "--data", "w.h5", "--out", "r", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--family", "llama", "--data", "w.h5", "--out", "r", "--lr", "-1"], "--lr"),
    (["train", "--family", "llama", "--data", "w.h5", "--out", "r", "--lr", "nan"], "--lr"),
    (["train", "--family", "llama", "--data", "w.h5", "--out", "r", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--family", "llama", "--data", "w.h5", "--out", "r", "--seed", "-1"], "--seed"),
    (["demo", "--seed", "-1"], "--seed"),
    (["bench", "--family", "llama", "--shape", "tiny", "--seq-len", "-5"], "--seq-len"),
    (["bench", "--family", "llama", "--shape", "tiny", "--iters", "0"], "--iters"),
    (["audit", "--model", "m", "--data", "w.h5", "--out", "r", "--bootstrap", "-1"], "--bootstrap"),
    (["audit", "--model", "m", "--data", "w.h5", "--out", "r", "--fpr", "0"], "--fpr"),
    (["audit", "--model", "m", "--data", "w.h5", "--out", "r", "--exact-budget", "nan"], "--exact-budget"),
])
def test_bad_values_are_refused_at_parse_time(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"glmjax: error: argument {option}:") and "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def test_inf_budget_and_zero_counts_stay_allowed():
    from glmjax.cli import build_parser

    a = build_parser().parse_args(["audit", "--model", "m", "--data", "d", "--out", "o", "--exact-budget", "inf",
                                   "--exact-k-max", "0", "--neighbours", "0"])
    assert a.exact_budget == float("inf") and a.exact_k_max == 0 and a.neighbours == 0


def test_an_oversized_plant_is_refused_before_allocating(tmp_path, capsys):
    from importlib import resources

    fa = resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz")
    w, c = tmp_path / "w.h5", tmp_path / "c.json"
    assert main(["data", "window", str(fa), "--out", str(w), "--length", "100"]) == 0
    assert main(["data", "canaries", "--out", str(c), "--num", "4", "--prefix-len", "10", "--secret-len", "12",
                 "--seed", "1", "--screen", str(w)]) == 0
    capsys.readouterr()
    assert main(["data", "plant", str(w), "--canaries", str(c), "--schedule", "10000000", "--out",
                 str(tmp_path / "p.h5"), "--seed", "1"]) == 2
    assert "40,000,000 canary copies" in capsys.readouterr().err
    assert not list(tmp_path.glob("p.h5*"))


def test_non_ascii_characters_are_named_as_typed():
    for seq, shown in (("ACGÄT", "'Ä'"), (b"ACG\xc3\x84T", "'Ä' (UTF-8 bytes 0xc3 0x84)"), ("AC\x01", "byte 0x01")):
        with pytest.raises(SequenceError, match="position (4|3): " + shown.replace("(", r"\(").replace(")", r"\)")):
            alphabet.encode(seq)


def test_damaged_headers_are_one_line_errors(tmp_path, capsys):
    import json
    import shutil
    from importlib import resources

    import h5py

    fa = resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz")
    w = tmp_path / "w.h5"
    assert main(["data", "window", str(fa), "--out", str(w), "--length", "100"]) == 0
    for key, value in (("schema_version", "x"), ("committed_rows", None)):
        bad = tmp_path / f"bad-{key}.h5"
        shutil.copy(w, bad)
        with h5py.File(bad, "r+") as f:
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
        capsys.readouterr()
        assert main(["data", "info", str(bad)]) == 2
        assert f"damaged: its {key} attribute" in capsys.readouterr().err
    c = tmp_path / "c.json"
    assert main(["data", "canaries", "--out", str(c), "--num", "2", "--prefix-len", "8", "--secret-len", "12",
                 "--seed", "1"]) == 0
    m = json.loads(c.read_text())
    m["schema_version"] = "one"
    c.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["data", "plant", str(w), "--canaries", str(c), "--schedule", "1", "--out", str(tmp_path / "p.h5"),
                 "--seed", "1"]) == 2
    assert "schema_version 'one', not an integer" in capsys.readouterr().err


def test_audit_inputs_are_checked_before_anything_is_written(tmp_path, capsys):
    """An unplanted manifest, or a shadow folder with a pickled inclusion matrix, is refused
    before any scoring (no report folder is left behind)."""
    import json
    from importlib import resources

    import numpy as np

    from glmjax import models

    fa = resources.files("glmjax.resources").joinpath("lambda_phage.fa.gz")
    w, c = tmp_path / "w.h5", tmp_path / "c.json"
    assert main(["data", "window", str(fa), "--out", str(w), "--length", "60", "--stride", "600"]) == 0
    assert main(["data", "split", str(w), "--member-fraction", "0.5", "--seed", "1"]) == 0
    assert main(["data", "canaries", "--out", str(c), "--num", "2", "--prefix-len", "8", "--secret-len", "12",
                 "--seed", "1"]) == 0
    model = tmp_path / "m"
    models.save(models.build("llama", models.get_family("llama").config_cls.tiny(), seed=0), model)
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["audit", "--model", str(model), "--data", str(w), "--canaries", str(c), "--out", str(out)]) == 2
    assert "never planted" in capsys.readouterr().err and not out.exists()
    sh = tmp_path / "shadows"
    sh.mkdir()
    (sh / "shadows.json").write_text(json.dumps({"num_models": 1, "row_ids": ["a"]}))
    np.save(sh / "inclusion.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert main(["audit", "--model", str(model), "--data", str(w), "--shadows", str(sh), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a readable shadow-model folder" in err and "Traceback" not in err and not out.exists()
    for flag, bad in (("--rmia-trim", "0.5"), ("--lira-variance", "ddof0"), ("--lira-centre", "mode")):
        assert main(["audit", "--model", str(model), "--data", str(w), "--out", str(out), flag, bad]) == 2
        assert flag in capsys.readouterr().err and not out.exists()


def test_a_batch_that_cannot_fit_is_refused_before_compiling(monkeypatch):
    from glmjax import models
    from glmjax.engine import runner
    from glmjax.errors import ConfigError

    model = models.build("llama", models.get_family("llama").config_cls.tiny(), seed=0)
    monkeypatch.setattr(runner, "device_memory_bytes", lambda device=None: 1 << 30)  # a 1 GiB device
    import re

    runner.check_batch_memory(model, 4096)
    with pytest.raises(ConfigError, match=r"--batch-tokens 100,000,000,000 needs about .* use --batch-tokens \d+") as e:
        runner.check_batch_memory(model, 100_000_000_000)
    hint = int(re.search(r"use --batch-tokens (\d+)", str(e.value)).group(1))
    runner.check_batch_memory(model, hint)  # the size it suggests fits
    # 16-way float32 logits: 4 x 16 bytes per token + the parameters
    assert hint * 4 * 16 + 4 * model.num_params() <= (1 << 30)


def test_every_option_is_documented_with_its_default():
    import argparse

    from glmjax.cli import build_parser

    missing, defaults = [], 0

    def walk(parser, prefix):
        nonlocal defaults
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*prefix, name])
            elif a.option_strings and a.dest not in ("help", "version"):
                if not a.help:
                    missing.append(" ".join([*prefix, a.option_strings[0]]))
                if a.default not in (None, False) and not isinstance(a, argparse._StoreTrueAction):
                    defaults += 1
                    assert "default" in a.help, (prefix, a.option_strings[0])

    walk(build_parser(), ["glmjax"])
    assert missing == [] and defaults > 30


def test_every_dtype_option_speaks_one_vocabulary():
    """Every command's --dtype takes the same words, mapped by one function."""
    import argparse

    from glmjax.cli import build_parser
    from glmjax.dtypes import DTYPE_CHOICES, dtype_name

    found = {}

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif "--dtype" in action.option_strings:
                found[" ".join(path)] = tuple(action.choices)

    walk(build_parser(), [])
    assert {"score", "bench", "audit", "train", "train-shadows"} <= set(found)
    assert set(found.values()) == {DTYPE_CHOICES}
    assert dtype_name("fp32") == "float32" and dtype_name("bf16") == "bfloat16"
    assert dtype_name("auto", backend="gpu") == "bfloat16" and dtype_name("auto", backend="cpu") == "float32"
    with pytest.raises(Exception, match="choose one of auto, fp32, bf16"):
        dtype_name("fp16")
