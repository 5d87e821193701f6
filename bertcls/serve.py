"""``python -m bertcls.serve``: a checkpoint or an ONNX export behind an HTTP JSON service, with dynamic batching.

``POST /predict`` takes ``{"texts": [...], "text_pairs": [...]}`` (pairs optional) and answers ``{"predictions":
[...]}``, one dict per text in input order, exactly as ``bertcls.predict --json`` prints them: every prediction goes
through ``bertcls.predict.predict_texts`` and so the one inference path. Concurrent requests are gathered into one
pass by ``bertcls.batching.Batcher``, on one worker thread, off the event loop. ``GET /health`` and ``GET /info``
(what the model is and how it reads texts) complete it. Bad requests get a 4xx with ``{"error": "..."}`` and never
reach the model; SIGTERM lets the requests in flight finish, then exits 0. Starlette and uvicorn come from the
``serve`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bertcls.batching import Batcher, PredictFn
from bertcls.card import CARD_NAME
from bertcls.errors import BertclsError, cli_errors, first_line
from bertcls.onnx_predict import OnnxClassifier, is_onnx_export
from bertcls.precision import PRECISIONS, check_precision

log = logging.getLogger("bertcls.serve")

REQUEST_FIELDS = ("texts", "text_pairs")


@dataclass
class ServeOptions:
    """How ``bertcls.serve`` batches requests and which requests it accepts."""

    max_batch: int = 32
    """Most texts in one pass: concurrent requests are gathered up to this many (1: no batching, one request per
    pass). A request is never split; one larger than this runs alone."""
    max_wait_ms: float = 5.0
    """How long the first request of a pass waits for others to join it (requests that arrive while a pass runs join
    the next one without waiting)."""
    max_texts: int = 256
    """Most texts in one request; more is a 413."""
    max_body_bytes: int = 1_000_000
    """Largest request body in bytes; more is a 413."""
    precision: str = "auto"
    """As ``bertcls.predict --precision``: ``auto`` (bf16 where the hardware has it), ``no``, ``bf16``, ``fp16``; an
    ONNX export runs in full precision."""
    forward_batch: int = 16
    """Most texts in one forward call: a pass's texts are sorted by length and run in forward calls of this many, so
    each text is padded only to the longest of its neighbours, not of the whole pass (on a CPU every padding token
    costs as much as a text's own; docs/serve.md). On an accelerator, where padding costs little and each call
    costs a launch, raise it to ``max_batch``."""

    def check(self) -> None:
        for name in ("max_batch", "max_texts", "max_body_bytes", "forward_batch"):
            if getattr(self, name) < 1:
                raise BertclsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise BertclsError(f"--max-wait-ms must be at least 0, got {self.max_wait_ms}")
        check_precision(self.precision)


# ---------------------------------------------------------------- the model


def default_threads() -> int:
    """``--threads``'s default: the cores this process may use, less one. The event loop (HTTP, JSON) runs beside the
    model's threads; with one thread per core for the maths, a thread that loses its core to the loop (or to
    anything else on the machine) holds up the others at every layer, and a pass slows several times over, not by
    a core's share (docs/serve.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def load_model(path: str | os.PathLike, threads: int | None = None):
    """An ONNX export folder (on ONNX Runtime, no torch) or a bertcls checkpoint (PyTorch), by what the folder holds;
    ``threads`` caps the runtime's threads."""
    if is_onnx_export(path):
        return OnnxClassifier.from_folder(path, threads=threads)
    import torch

    from bertcls.predict import load_predictor

    if threads is not None:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    return load_predictor(path)


def model_info(model, folder: str | os.PathLike) -> dict[str, Any]:
    """What ``GET /info`` answers: the labels, how texts are read, calibration, the backbone and the model card."""
    onnx = isinstance(model, OnnxClassifier)
    card = Path(folder) / CARD_NAME
    return {
        "backend": "onnx" if onnx else "pytorch",
        "task": model.task,
        "labels": model.labels,
        "thresholds": model.thresholds,
        "max_length": model.max_length,
        "truncation": model.truncation,
        "window_stride": model.window_stride,
        "temperature": model.temperature,  # folded into the weights of both; recorded in both
        "backbone": model.config.get("backbone") if onnx else model.backbone.config.model_type,
        "model_card": card.read_text(encoding="utf-8") if card.is_file() else None,
    }


def predictor(model, options: ServeOptions) -> PredictFn:
    """``(texts, pairs) -> prediction dicts`` through ``bertcls.predict.predict_nonempty``, in length-sorted forward
    calls of ``forward_batch`` texts. An empty (or whitespace-only) text gets no prediction, as in training and
    ``bertcls.predict --json``: ``{"skipped": "empty text"}`` in its place."""
    from bertcls.predict import predict_nonempty

    def predict(texts: list[str], pairs: list[str] | None) -> list[dict[str, Any]]:
        preds = predict_nonempty(model, texts, pairs, options.forward_batch, options.precision)
        return [p if p is not None else {"skipped": "empty text"} for p in preds]

    return predict


# ---------------------------------------------------------------- requests


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_json(request, limit: int) -> Any:
    """The request body parsed as JSON, read no further than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes; the limit is {limit} (--max-body-bytes)")
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit} bytes (--max-body-bytes)")
        body.append(chunk)
    try:
        return json.loads(b"".join(body))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"the body is not valid JSON ({first_line(e)})") from None


def _strings(payload: dict[str, Any], key: str) -> list[str]:
    values = payload[key]
    if not isinstance(values, list) or not values:
        raise RequestError(422, f'"{key}" must be a non-empty list of strings')
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RequestError(422, f'"{key}"[{i}] must be a string, not {type(v).__name__}')
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (\ud800) would fail the tokenizer, and with it the whole pass
            raise RequestError(422, f'"{key}"[{i}] is not valid Unicode (a lone surrogate)') from None
    return values


def parse_request(payload: Any, max_texts: int) -> tuple[list[str], list[str] | None]:
    """``texts`` and ``text_pairs`` (or None) of a ``/predict`` body, checked."""
    if not isinstance(payload, dict):
        raise RequestError(422, 'the body must be a JSON object: {"texts": ["..."]}')
    unknown = sorted(set(payload) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; valid: {', '.join(REQUEST_FIELDS)}")
    if "texts" not in payload:
        raise RequestError(422, 'the body has no "texts": send {"texts": ["..."]}')
    texts = _strings(payload, "texts")
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {max_texts} (--max-texts)")
    if payload.get("text_pairs") is None:
        return texts, None
    pairs = _strings(payload, "text_pairs")
    if len(pairs) != len(texts):
        raise RequestError(422, f'{len(texts)} "texts" but {len(pairs)} "text_pairs"')
    return texts, pairs


# ---------------------------------------------------------------- the application


def build_app(predict: PredictFn, info: dict[str, Any], options: ServeOptions):
    """The Starlette application: ``/predict`` through a ``Batcher`` over ``predict``, ``/health``, ``/info``."""
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError as e:
        raise BertclsError("bertcls.serve needs starlette and uvicorn: pip install 'bertcls[serve]'") from e

    batcher = Batcher(predict, options.max_batch, options.max_wait_ms)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def predict_endpoint(request):
        try:
            texts, pairs = parse_request(await read_json(request, options.max_body_bytes), options.max_texts)
        except RequestError as e:
            return error(e.status, str(e))
        try:
            rows = await batcher.predict(texts, pairs)
        except Exception as e:  # the model failed on a pass: its requests get a 500, the server goes on
            log.exception("prediction failed")
            return error(500, f"prediction failed: {first_line(e)}")
        return JSONResponse({"predictions": rows})

    async def health(request):
        return JSONResponse({"status": "ok", "in_flight": batcher.in_flight})

    async def info_endpoint(request):
        return JSONResponse({**info, "serve": asdict(options)})

    async def http_error(request, exc: HTTPException):  # 404, 405: JSON like every other error
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.close()  # after uvicorn has let the requests in flight finish

    app = Starlette(
        routes=[
            Route("/predict", predict_endpoint, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/info", info_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def run_server(app, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; SIGTERM finishes the requests in flight and returns (exit 0)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            app.state.batcher.drain_soon()  # queued requests run now rather than wait for company that won't come

    # uvicorn re-raises a caught SIGTERM once it has shut down: a no-op handler makes that a normal return.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info", lifespan="on")
    server = Server(config)
    server.run()
    if not server.started:
        raise BertclsError(f"could not serve on {host}:{port} (see the log above)")


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = ServeOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bertcls.serve",
        description="Serve a bertcls checkpoint or ONNX export over HTTP: POST /predict, GET /health, GET /info.",
        epilog="example:\n  python -m bertcls.serve --checkpoint runs/default/best --port 8000\n"
        '  curl -s localhost:8000/predict -d \'{"texts": ["a gripping film"]}\'',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a bertcls checkpoint or ONNX export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=d.max_batch, help="most texts in one forward pass (1: off)")
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long a pass waits to fill")
    parser.add_argument("--max-texts", type=int, default=d.max_texts, help="most texts in one request")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="largest request body")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch/onnxruntime threads (default: the cores less one)"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="as bertcls.predict's")
    parser.add_argument(
        "--forward-batch", type=int, default=d.forward_batch, help="most texts in one forward call within a pass"
    )
    return parser.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = ServeOptions(**{name: getattr(args, name) for name in ServeOptions.__dataclass_fields__})
    options.check()  # before the model loads: a typo costs nothing
    if args.threads is not None and args.threads < 1:
        raise BertclsError(f"--threads must be at least 1, got {args.threads}")
    if not 0 <= args.port <= 65535:
        raise BertclsError(f"--port must be between 0 and 65535, got {args.port}")
    if is_onnx_export(args.checkpoint) and args.precision not in ("auto", "no"):
        raise BertclsError(f"an ONNX export runs in full precision; drop --precision {args.precision}")
    threads = args.threads if args.threads is not None else default_threads()
    model = load_model(args.checkpoint, threads)
    predict = predictor(model, options)
    predict(["warm-up"], None)  # the first pass pays for lazy set-up; no client should
    info = model_info(model, args.checkpoint)
    app = build_app(predict, info, options)
    print(
        f"bertcls.serve: {info['backend']} model from {args.checkpoint}, "
        f"max batch {options.max_batch}, max wait {options.max_wait_ms} ms, forward batch {options.forward_batch}, "
        f"{threads} thread{'s' if threads > 1 else ''}",
        file=sys.stderr,
        flush=True,
    )
    run_server(app, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
