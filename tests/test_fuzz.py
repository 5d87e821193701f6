"""Property tests: any Unicode text (control characters, huge, empty) loads and gets a well-formed prediction."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertcls.data import load_split

TEXTS = st.lists(
    st.one_of(
        st.text(max_size=200),  # any code point but surrogates: control characters, combining marks, emoji, ""
        st.sampled_from(["", " ", "\x00", "\r\n", "\u200b", "\ufeff"]),
        # huge texts, built by repetition (hypothesis refuses to draw that much entropy)
        st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=8), st.integers(2000, 20000)),
    ),
    min_size=1,
    max_size=6,
)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(texts=TEXTS)
def test_any_text_loads_unchanged(tmp_path, texts):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(texts)))
    split = load_split(str(path))
    assert split.texts == texts and split.labels == [i % 2 for i in range(len(texts))]


LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def three_label_models(tiny_bert):
    from bertcls import BertForTextClassification

    single = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=0)
    multi = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, seed=1, task="multi_label")
    multi.thresholds = [0.3, 0.5, 0.7]
    return single, multi


@FAST
@given(texts=TEXTS)
def test_every_text_gets_a_prediction(three_label_models, texts):
    single, multi = three_label_models
    out = single.predict(texts, batch_size=4)
    assert len(out) == len(texts)
    for o in out:
        probs = o["probabilities"]
        assert list(probs) == LABELS and all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs.values())
        assert math.fsum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert o["label"] in LABELS and o["score"] == probs[o["label"]] == max(probs.values())
    # multi-label: a set drawn from the label set, exactly the labels at or above their thresholds, most probable first
    for o in multi.predict(texts, batch_size=4):
        probs = o["probabilities"]
        assert list(probs) == LABELS and all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs.values())
        expected = {name for name, t in zip(LABELS, multi.thresholds, strict=True) if probs[name] >= t}
        assert set(o["labels"]) == expected and len(o["labels"]) == len(expected)
        assert o["scores"] == [probs[name] for name in o["labels"]] and o["scores"] == sorted(o["scores"], reverse=True)
