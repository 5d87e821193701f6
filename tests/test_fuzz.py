"""Property tests: any Unicode text (control characters, huge, empty) loads and gets a prediction."""

from __future__ import annotations

import json

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


@FAST
@given(texts=TEXTS)
def test_every_text_gets_a_prediction(tiny_model, texts):
    out = tiny_model.predict(texts, batch_size=4)
    assert len(out) == len(texts)
    assert all(o["label"] in tiny_model.labels and 0.0 <= o["score"] <= 1.0 for o in out)
