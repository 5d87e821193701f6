"""CPU speed tricks, behind one switch (``train.speedups``, on by default).

None of them changes the model's maths; each only changes how fast (or in how much memory) it runs on a CPU:

- ``dropout``: the same dropout with a cheaper random mask, in layers and in attention.
- ``toplayer``: with ``cls``/``pooler`` pooling, the top encoder layer computed for the first token only.
- ``allocator``: the training command re-run under jemalloc; oneDNN's primitive caches kept small.

The first two are applied to a model by ``apply(model)`` (a training run, and ``load_checkpoint`` for evaluation
and prediction); the allocator's are process-level and called by ``train()`` and the training command. A model
built with ``BertForTextClassification.from_pretrained`` runs without them until ``apply`` is called. Importing this
package loads no torch (``scripts/bench.py`` reads ``allocator`` in a light parent process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bertcls.model import BertForTextClassification


def apply(model: BertForTextClassification) -> dict[str, int | bool]:
    """Give ``model`` the cheaper dropout and the first-token top layer, in place; returns what was applied:
    ``{"fast_dropouts": <dropout modules replaced>, "first_token_top_layer": <whether it applies>}``."""
    from bertcls.speed import dropout, toplayer

    return {"fast_dropouts": dropout.use_fast_dropout(model), "first_token_top_layer": toplayer.install(model)}
