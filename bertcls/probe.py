"""A linear head fitted to convergence on cached backbone features, as scikit-learn's LogisticRegression fits one
(``train.head_solver=lbfgs``, the default for a linear head on the feature cache).

On the feature cache an epoch of head steps costs milliseconds, yet a few epochs of AdamW stop far from the optimum.
Full-batch L-BFGS on the training loss plus an L2 penalty reaches it in well under a second, and the penalty's
strength is chosen on the validation split from a grid (the recipe evaluates each fit as a step and keeps the best),
which is what a tuned scikit-learn probe does (its ``C`` is ``1 / (2 * penalty * n_train)``). The loss is the run's
own (class weights, label smoothing, multi-label BCE with ``pos_weight``), the bias is not penalized, and dropout
plays no part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# scikit-learn's C for each fit, strongest penalty first, so each fit starts from the previous (a warm start).
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def fit_linear(
    linear: torch.nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable,
    c: float,
    max_iter: int = 500,
    prior: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Minimize ``loss_fn(linear(x), y) + ||W||^2 / (2 C n)`` in place with full-batch L-BFGS; returns (training
    loss without the penalty, iterations used). With ``prior`` (a weight of W's shape, e.g. the label_embeddings
    head) the penalty pulls W toward it instead of toward zero: ``||W - prior||^2 / (2 C n)``, so a strong penalty
    keeps the prior's (zero-shot) classifier and a weak one fits the data."""
    penalty = 1.0 / (2.0 * c * len(x))
    # The prior enters as a shift of the penalized weight only (below), so C means what it means without it.
    anchor = prior.detach().to(linear.weight) if prior is not None else None
    opt = torch.optim.LBFGS(
        linear.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        w = linear.weight if anchor is None else linear.weight - anchor
        loss = loss_fn(linear(x), y) + penalty * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    iterations = opt.state[opt._params[0]].get("n_iter", 0)
    with torch.no_grad():
        return float(loss_fn(linear(x), y)), int(iterations)
