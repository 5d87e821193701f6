"""Load-test ``bertcls.serve`` (batching on and off) against the tutorial server (issue #30 §1).

    PYTHONPATH=. python scripts/bench_serve.py --checkpoint runs/pooler/best [--requests 10000] [--threads 2]

The tutorial baseline is FastAPI with one ``transformers.pipeline`` call per request (an ``async def`` endpoint: the
call blocks the event loop, as the tutorials write it), on the ``--format hf`` export of the same checkpoint, which
must use ``pooling: pooler`` so the export carries its head. Without ``--checkpoint`` the script builds one: the
packaged MiniLM with a new, untrained pooler head (the speed is a trained model's; the labels mean nothing).

All three servers run at once, each its own process on loopback, pinned to the same cores (``--cpus``) with the same
thread cap; the levels alternate between them (1, 8, 32 clients by default) so a busy machine slows all alike. Each
client is closed-loop: it sends one short Rotten Tomatoes text (``{"texts": [text]}``), waits for the answer, sends
the next; ``--requests`` answers per server and level. Reported per server and level: requests/s, p50 and p99
latency, failed requests (a non-200 answer or a broken connection), the server's peak RSS so far (VmHWM) and
RSS now, to show memory staying flat, and the clients' own CPU (cores they kept busy: 100% is one core). The
clients are raw HTTP/1.1 keep-alive connections in one asyncio loop here, light next to the servers (they share the
machine, so pin the servers with ``--cpus`` where cores are spare).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32)

BASELINE = """
import sys
import torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

torch.set_num_threads(int(sys.argv[3]))
torch.set_num_interop_threads(1)
classifier = pipeline("text-classification", model=sys.argv[1], top_k=None, truncation=True, device="cpu")
app = FastAPI()


class Texts(BaseModel):
    texts: list[str]


@app.post("/predict")
async def predict(body: Texts):
    return {"predictions": classifier(body.texts)}


@app.get("/health")
async def health():
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=False, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` short texts (at most 20 words) from the packaged Rotten Tomatoes test split."""
    from bertcls.resources import packaged_data_file

    with gzip.open(packaged_data_file("packaged:rotten_tomatoes/test"), "rt", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f) if len(row["text"].split()) <= 20]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def build_checkpoint(folder: Path) -> Path:
    """The packaged MiniLM with a new ``pooler`` head: a stand-in for a trained checkpoint, at the same speed."""
    from bertcls import BertForTextClassification

    model = BertForTextClassification.from_pretrained(
        "packaged:all-MiniLM-L6-v2", labels=["negative", "positive"], pooling="pooler", seed=0
    )
    return model.save_pretrained(folder / "checkpoint")


class ServerProcess:
    def __init__(self, name: str, cmd: list[str], port: int, cpus: str | None, threads: int):
        self.name, self.port = name, port
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        pin = ["taskset", "-c", cpus] if cpus else []
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (the server writes to it until stop)
        self.proc = subprocess.Popen([*pin, *cmd], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"{self.name} exited:\n{self.log.read().decode()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} did not start in {timeout:.0f} s")

    def memory_mb(self) -> tuple[float, float]:
        """(peak RSS, RSS now) of the server process in MB (through taskset, which execs it: the same pid)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmHWM", "VmRSS")}
        return kb["VmHWM"] / 1024, kb["VmRSS"] / 1024

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def one_client(port: int, bodies: list[bytes], budget: list[int], latencies: list[float], failed: list[int]):
    """A closed-loop client on one keep-alive connection, until ``budget[0]`` requests have been sent in all."""
    reader = writer = None
    while budget[0] > 0:
        budget[0] -= 1
        body = bodies[budget[0] % len(bodies)]
        head = f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head.encode() + b"\r\n\r\n" + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", answer)
            payload = await reader.readexactly(int(length.group(1))) if length else b""
            ok = answer.startswith(b"HTTP/1.1 200") and b'"predictions"' in payload
            if not length:  # no way to find the next answer on this connection
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            ok, writer = False, None
        latencies.append(time.perf_counter() - start)
        failed[0] += not ok


async def load(port: int, clients: int, requests: int, bodies: list[bytes]) -> dict[str, float]:
    latencies: list[float] = []
    budget, failed = [requests], [0]
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_client(port, bodies, budget, latencies, failed) for _ in range(clients)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "failed": failed[0],
        "client_cpu": cpu / wall,  # cores the clients themselves kept busy: they share the machine with the servers
    }


def start_servers(args, checkpoint: Path, hf: Path, threads: int) -> list[ServerProcess]:
    py = sys.executable
    serve = [py, "-m", "bertcls.serve", "--checkpoint", str(checkpoint), "--threads", str(threads)]
    serve += ["--precision", args.precision, "--forward-batch", str(args.forward_batch)]
    servers = []
    for name, max_batch in (("bertcls batching", args.max_batch), ("bertcls no batching", 1)):
        port = free_port()
        cmd = [*serve, "--port", str(port), "--max-batch", str(max_batch)]
        servers.append(ServerProcess(name, cmd, port, args.cpus, threads))
    baseline = Path(args.workdir) / "baseline_server.py"
    baseline.write_text(BASELINE)
    port = free_port()
    cmd = [py, str(baseline), str(hf), str(port), str(threads)]
    servers.append(ServerProcess("FastAPI + pipeline", cmd, port, args.cpus, threads))
    for s in servers:
        s.wait_ready()
    return servers


def run(args) -> list[dict]:
    from bertcls.export import export_hf
    from bertcls.serve import default_threads

    work = Path(args.workdir)
    checkpoint = Path(args.checkpoint) if args.checkpoint else build_checkpoint(work)
    hf = export_hf(checkpoint, work / "hf", overwrite=True)
    threads = args.threads or default_threads()
    bodies = [json.dumps({"texts": [t]}).encode() for t in short_texts(512)]
    servers = start_servers(args, checkpoint, hf, threads)
    rows = []
    try:
        for s in servers:  # warm-up: first requests pay for lazy set-up
            asyncio.run(load(s.port, 4, 32, bodies))
        for clients in args.clients:
            for s in servers:
                result = asyncio.run(load(s.port, clients, args.requests, bodies))
                peak, now = s.memory_mb()
                rows.append({"server": s.name, "clients": clients, **result, "peak_rss_mb": peak, "rss_mb": now})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        codes = {s.name: s.stop() for s in servers}
    print(f"exit codes after SIGTERM: {codes}")
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| server | clients | requests | requests/s | p50 ms | p99 ms | failed | peak RSS MB | RSS MB | client CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['failed']} | {r['peak_rss_mb']:.0f} | {r['rss_mb']:.0f} | {r['client_cpu']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a bertcls checkpoint with pooling: pooler (default: untrained MiniLM)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per server and level")
    parser.add_argument("--clients", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--threads", type=int, default=None, help="threads per server (default: bertcls.serve's)")
    parser.add_argument("--cpus", default=None, help="pin every server to these cores (taskset -c), e.g. 0-3")
    parser.add_argument("--max-batch", type=int, default=32, help="bertcls's --max-batch with batching on")
    parser.add_argument("--forward-batch", type=int, default=16, help="bertcls's --forward-batch")
    parser.add_argument("--precision", default="no", help="bertcls's --precision (no: fp32, as the pipeline runs)")
    parser.add_argument("--workdir", default=None, help="where the HF export goes (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        args.workdir = args.workdir or tmp
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        rows = run(args)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
