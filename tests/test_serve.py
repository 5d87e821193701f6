"""bertcls.serve and its batcher: a real server process on the tiny model, and the batcher in process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bertcls.batching import Batcher
from bertcls.serve import RequestError, parse_request

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a gripping film", "dull", "", "the plot was very boring and the ending quite flat", "lovely"]


# ---------------------------------------------------------------- the batcher, in process


def echo(calls: list):
    """A predict function that records each call and answers each text with its own text (and pair)."""

    def predict(texts, pairs):
        calls.append((list(texts), None if pairs is None else list(pairs)))
        return [{"text": t, "pair": None if pairs is None else pairs[i]} for i, t in enumerate(texts)]

    return predict


async def run_concurrently(batcher: Batcher, requests: list[tuple[list[str], list[str] | None]]):
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.predict(t, p) for t, p in requests))
    finally:
        await batcher.close()


def test_concurrent_requests_share_one_pass_and_get_their_own_rows():
    calls: list = []
    requests = [([f"r{i}-a", f"r{i}-b"], None) for i in range(5)]
    # 10 texts fill max_batch=10: the pass starts as soon as all are queued, long before the wait ends
    answers = asyncio.run(run_concurrently(Batcher(echo(calls), max_batch=10, max_wait_ms=60_000), requests))
    assert len(calls) == 1 and len(calls[0][0]) == 10
    for (texts, _), rows in zip(requests, answers):
        assert [r["text"] for r in rows] == texts


def test_passes_hold_at_most_max_batch_texts_and_never_split_a_request():
    calls: list = []
    requests = [([f"r{i}-{j}" for j in range(n)], None) for i, n in enumerate([3, 3, 7, 1, 2])]
    answers = asyncio.run(run_concurrently(Batcher(echo(calls), max_batch=4, max_wait_ms=0), requests))
    sizes = [len(texts) for texts, _ in calls]
    assert sizes == [3, 3, 7, 3]  # the 7-text request runs alone; 1 + 2 share a pass
    assert all(size <= 4 or size == 7 for size in sizes)
    for (texts, _), rows in zip(requests, answers):
        assert [r["text"] for r in rows] == texts


def test_max_batch_one_is_one_request_per_pass():
    calls: list = []
    requests = [([f"t{i}"], None) for i in range(4)]
    asyncio.run(run_concurrently(Batcher(echo(calls), max_batch=1, max_wait_ms=50), requests))
    assert [c[0] for c in calls] == [["t0"], ["t1"], ["t2"], ["t3"]]


def test_requests_with_and_without_pairs_in_one_batch():
    calls: list = []
    requests = [(["a", "b"], None), (["c"], ["c2"]), (["d"], None), (["e", "f"], ["e2", "f2"])]
    answers = asyncio.run(run_concurrently(Batcher(echo(calls), max_batch=6, max_wait_ms=60_000), requests))
    assert calls == [(["a", "b", "d"], None), (["c", "e", "f"], ["c2", "e2", "f2"])]
    assert [[(r["text"], r["pair"]) for r in rows] for rows in answers] == [
        [("a", None), ("b", None)],
        [("c", "c2")],
        [("d", None)],
        [("e", "e2"), ("f", "f2")],
    ]


def test_requests_queued_during_a_pass_run_next_without_waiting_for_company():
    release = threading.Event()
    calls: list = []

    def predict(texts, pairs):
        release.wait(60)  # the first pass holds the worker until "c" is queued
        return echo(calls)(texts, pairs)

    async def scenario():
        batcher = Batcher(predict, max_batch=2, max_wait_ms=3_600_000)  # an hour: only a full batch starts at once
        batcher.start()
        try:
            first = asyncio.gather(batcher.predict(["a"]), batcher.predict(["b"]))  # full: runs at once
            while not batcher.batch_sizes:
                await asyncio.sleep(0)
            late = asyncio.ensure_future(batcher.predict(["c"]))  # arrives while the pass runs
            while batcher.in_flight < 3:
                await asyncio.sleep(0)
            release.set()
            await first
            return await asyncio.wait_for(late, 60)  # a guard against hanging (the hour's wait), not a timing
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [{"text": "c", "pair": None}]
    assert [texts for texts, _ in calls] == [["a", "b"], ["c"]]


def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on():
    def predict(texts, pairs):
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return [{"text": t} for t in texts]

    async def scenario():
        batcher = Batcher(predict, max_batch=1, max_wait_ms=0)
        batcher.start()
        try:
            asked = (batcher.predict(["boom"]), batcher.predict(["fine"]))
            bad, good = await asyncio.gather(*asked, return_exceptions=True)
            again = await batcher.predict(["still fine"])
        finally:
            await batcher.close()
        return bad, good, again, batcher.in_flight

    bad, good, again, in_flight = asyncio.run(scenario())
    assert isinstance(bad, RuntimeError) and good == [{"text": "fine"}] and again == [{"text": "still fine"}]
    assert in_flight == 0


def test_drain_runs_queued_requests_without_waiting_for_the_pass_to_fill():
    async def scenario():
        batcher = Batcher(echo([]), max_batch=64, max_wait_ms=3_600_000)  # an hour: only drain can start the pass
        batcher.start()
        try:
            asked = asyncio.ensure_future(batcher.predict(["a"]))
            while batcher.in_flight < 1:
                await asyncio.sleep(0)
            batcher.drain_soon()
            return await asyncio.wait_for(asked, 60)  # a guard against hanging, not a timing
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [{"text": "a", "pair": None}]


def test_an_onnx_folder_is_served_with_onnx_runtime_under_the_thread_cap(tmp_path, monkeypatch):
    from bertcls import serve
    from bertcls.onnx_predict import ONNX_CONFIG_NAME

    (tmp_path / ONNX_CONFIG_NAME).write_text("{}")
    seen = {}
    monkeypatch.setattr(serve.OnnxClassifier, "from_folder", lambda path, threads=None: seen.update(threads=threads))
    serve.load_model(tmp_path, threads=3)
    assert seen == {"threads": 3}


@pytest.mark.parametrize(("cores", "threads"), [({0, 1, 2, 3}, 3), ({0, 1}, 1), ({5}, 1)])
def test_the_cli_leaves_one_core_to_the_event_loop_by_default(cores, threads, tmp_path, monkeypatch):
    from bertcls import serve

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores, raising=False)
    seen = {}

    def load(path, threads=None):
        seen["threads"] = threads
        raise SystemExit(0)  # stop before serving

    monkeypatch.setattr(serve, "load_model", load)
    with pytest.raises(SystemExit):
        serve.main(["--checkpoint", str(tmp_path)])
    assert seen == {"threads": threads}


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        ([1, 2], 422, "JSON object"),
        ({}, 422, 'no "texts"'),
        ({"texts": []}, 422, "non-empty list"),
        ({"texts": "one text"}, 422, "non-empty list"),
        ({"texts": ["a", None]}, 422, '"texts"[1] must be a string, not NoneType'),
        ({"texts": ["\ud800"]}, 422, "lone surrogate"),
        ({"texts": ["a"], "text_pairs": ["b", "c"]}, 422, '1 "texts" but 2 "text_pairs"'),
        ({"texts": ["a"], "top_k": 2}, 422, "unknown field 'top_k'"),
        ({"texts": ["a"] * 4}, 413, "limit is 3"),
    ],
)
def test_parse_request_refuses(payload, status, words):
    with pytest.raises(RequestError) as e:
        parse_request(payload, max_texts=3)
    assert e.value.status == status and words in str(e.value)


def test_parse_request_keeps_empty_strings_and_pairs():
    assert parse_request({"texts": ["", "b"], "text_pairs": ["x", ""]}, 3) == (["", "b"], ["x", ""])
    assert parse_request({"texts": ["a"], "text_pairs": None}, 3) == (["a"], None)


def test_a_pass_runs_in_length_sorted_forward_calls_of_forward_batch_texts(tiny_model):
    from bertcls.serve import ServeOptions, predictor

    texts = [" ".join(["word"] * n) for n in (3, 9, 1, 7, 5, 8, 2, 6, 4, 10)]
    shapes = []
    tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    rows = predictor(tiny_model, ServeOptions(max_batch=32, forward_batch=4, precision="no"))(texts, None)
    assert [s[0] for s in shapes] == [4, 4, 2]
    lengths = sorted((len(ids) for ids in tiny_model.tokenizer(texts)["input_ids"]), reverse=True)
    assert [s[1] for s in shapes] == [lengths[0], lengths[4], lengths[8]]  # longest first, each to its own longest
    whole = tiny_model.predict(texts, batch_size=32)
    assert [r["label"] for r in rows] == [w["label"] for w in whole]
    assert [r["score"] for r in rows] == pytest.approx([w["score"] for w in whole], abs=1e-5)


def test_a_multi_label_model_answers_label_sets_as_bertcls_predict(tiny_bert):
    from starlette.testclient import TestClient

    from bertcls import BertForTextClassification
    from bertcls.predict import predict_nonempty
    from bertcls.serve import ServeOptions, build_app, model_info, predictor

    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["x", "y", "z"], task="multi_label", seed=0)
    model.thresholds = [0.3, 0.5, 0.7]
    options = ServeOptions(precision="no")
    with TestClient(build_app(predictor(model, options), model_info(model, tiny_bert), options)) as client:
        got = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
        info = client.get("/info").json()
    want = [p or {"skipped": "empty text"} for p in predict_nonempty(model, TEXTS, None, 64, "no")]
    assert got[TEXTS.index("")] == {"skipped": "empty text"}  # as bertcls.predict --json: no answer for ""
    got, want = [p for p in got if "skipped" not in p], [p for p in want if "skipped" not in p]
    assert [(p["labels"], list(p["probabilities"])) for p in got] == [
        (p["labels"], list(p["probabilities"])) for p in want
    ]
    assert got[0]["scores"] == pytest.approx(want[0]["scores"], abs=1e-6)
    assert info["task"] == "multi_label" and info["thresholds"] == pytest.approx([0.3, 0.5, 0.7])


# ---------------------------------------------------------------- a real server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m bertcls.serve`` in a process of its own on a free loopback port."""

    def __init__(self, checkpoint: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        cmd = [sys.executable, "-m", "bertcls.serve", "--checkpoint", str(checkpoint), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, "--threads", "1", *options], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server did not come up:\n{self.output()}")

    def output(self) -> str:
        return self.proc.stdout.read().decode() if self.proc.poll() is not None else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, tmp_path_factory) -> Path:
    from bertcls import BertForTextClassification

    model = BertForTextClassification.from_pretrained(tiny_bert, labels=["bad", "good", "meh"], seed=0)
    return model.save_pretrained(tmp_path_factory.mktemp("serve") / "best")


@pytest.fixture(scope="module")
def servers(checkpoint):
    """Both servers of this module, started side by side: the one most tests use, and one for the SIGTERM test whose
    passes wait up to 30 s to fill (so its requests are surely in flight when SIGTERM comes)."""
    started = {
        "main": Server(checkpoint, "--precision", "no", "--max-texts", "8", "--max-body-bytes", "4096"),
        "slow": Server(checkpoint, "--precision", "no", "--max-wait-ms", "30000", "--max-batch", "64"),
    }
    try:
        yield {name: s.wait_ready() for name, s in started.items()}
    finally:
        codes = {name: s.stop() for name, s in started.items()}
    assert codes["main"] == 0, started["main"].output()


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"]


@pytest.fixture(scope="module")
def expected(checkpoint):
    """What bertcls.predict gives for TEXTS (as its --json prints them), and for TEXTS paired with reversed TEXTS."""
    from bertcls.predict import load_predictor, predict_nonempty

    model = load_predictor(checkpoint)

    def predict(texts, pairs=None):
        return [p or {"skipped": "empty text"} for p in predict_nonempty(model, texts, pairs, 64, "no")]

    return {"plain": predict(TEXTS), "pairs": predict(TEXTS, TEXTS[::-1]), "each": {t: predict([t])[0] for t in TEXTS}}


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [p.get("label") for p in got] == [p.get("label") for p in want]
    assert [p.get("skipped") for p in got] == [p.get("skipped") for p in want]  # an empty text: no prediction
    for g, w in ((g, w) for g, w in zip(got, want) if "skipped" not in w):
        assert list(g["probabilities"]) == list(w["probabilities"])  # most probable first, as predict --json
        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-6)
        assert g["score"] == pytest.approx(w["score"], abs=1e-6)


@pytest.mark.integration
def test_predictions_match_bertcls_predict(server, expected):
    r = httpx.post(server.url + "/predict", json={"texts": TEXTS}, timeout=60)
    assert r.status_code == 200
    assert_same(r.json()["predictions"], expected["plain"])
    r = httpx.post(server.url + "/predict", json={"texts": TEXTS, "text_pairs": TEXTS[::-1]}, timeout=60)
    assert_same(r.json()["predictions"], expected["pairs"])


@pytest.mark.integration
def test_health_and_info(server, checkpoint):
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "in_flight": 0}
    info = httpx.get(server.url + "/info").json()
    assert info["backend"] == "pytorch" and info["task"] == "single_label"
    assert info["labels"] == ["bad", "good", "meh"] and info["max_length"] == 64 and info["truncation"] == "head"
    assert info["temperature"] is None and info["backbone"] == "bert"
    assert info["model_card"] == (checkpoint / "README.md").read_text()
    assert info["serve"]["max_texts"] == 8


@pytest.mark.integration
def test_concurrent_requests_each_get_their_own_answer(server, expected):
    jobs = [TEXTS[i % len(TEXTS)] for i in range(24)]
    answers: dict[int, httpx.Response] = {}

    def ask(i: int) -> None:
        answers[i] = httpx.post(server.url + "/predict", json={"texts": [jobs[i]]}, timeout=60)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, text in enumerate(jobs):
        assert answers[i].status_code == 200
        assert_same(answers[i].json()["predictions"], [expected["each"][text]])


BAD_REQUESTS = [
    ("malformed JSON", b'{"texts": ["a"', 400, "not valid JSON"),
    ("nested too deep", b"[" * 3000, 400, "not valid JSON"),
    ("not UTF-8", b'{"texts": ["\xff"]}', 400, "not valid JSON"),
    ("not an object", b'["a"]', 422, "JSON object"),
    ("no texts", b'{"text": ["a"]}', 422, "unknown field 'text'"),
    ("missing texts", b"{}", 422, 'no "texts"'),
    ("empty texts", b'{"texts": []}', 422, "non-empty list"),
    ("non-string", b'{"texts": ["a", 3]}', 422, "must be a string, not int"),
    ("lone surrogate", b'{"texts": ["\\ud800"]}', 422, "lone surrogate"),
    ("pair count", b'{"texts": ["a"], "text_pairs": []}', 422, "non-empty list"),
    ("too many texts", json.dumps({"texts": ["a"] * 9}).encode(), 413, "limit is 8"),
    ("body too large", json.dumps({"texts": ["a" * 5000]}).encode(), 413, "limit is 4096"),
]


@pytest.mark.integration
def test_bad_requests_get_a_one_line_4xx_and_the_server_goes_on(server, expected):
    for name, body, status, words in BAD_REQUESTS:
        r = httpx.post(server.url + "/predict", content=body, timeout=60)
        assert r.status_code == status, (name, r.text)
        assert list(r.json()) == ["error"] and words in r.json()["error"], (name, r.text)
        assert "\n" not in r.text, name
    assert httpx.get(server.url + "/nowhere").json() == {"error": "Not Found"}
    assert httpx.get(server.url + "/predict").status_code == 405
    # streamed without a Content-Length: cut off at the limit all the same
    r = httpx.post(server.url + "/predict", content=iter([b'{"texts": ["', b"a" * 5000, b'"]}']), timeout=60)
    assert r.status_code == 413 and "over 4096 bytes" in r.json()["error"]
    r = httpx.post(server.url + "/predict", json={"texts": TEXTS[:2]}, timeout=60)
    assert_same(r.json()["predictions"], expected["plain"][:2])


@pytest.mark.integration
def test_sigterm_answers_the_requests_in_flight_and_exits_0(servers, expected):
    server = servers["slow"]  # its passes wait up to 30 s to fill: the requests stay in flight until SIGTERM
    answers: dict[int, httpx.Response] = {}

    def ask(i: int) -> None:
        answers[i] = httpx.post(server.url + "/predict", json={"texts": [TEXTS[i]]}, timeout=120)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health").json()["in_flight"] < 4:
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.05)
    finally:
        code = server.stop()
        for t in threads:
            t.join()
    assert code == 0, server.output()
    for i in range(4):
        assert answers[i].status_code == 200
        assert_same(answers[i].json()["predictions"], [expected["each"][TEXTS[i]]])
