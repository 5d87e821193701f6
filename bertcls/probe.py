"""A linear head fitted to convergence on cached backbone features, as scikit-learn's LogisticRegression fits one
(``train.head_solver=lbfgs``, the default for a linear head on the feature cache).

On the feature cache an epoch of head steps costs milliseconds, yet a few epochs of AdamW stop far from the optimum.
Full-batch L-BFGS on the training loss plus an L2 penalty reaches it in well under a second, and the penalty's
strength is chosen on the validation split from a grid (the recipe evaluates each fit as a step and keeps the best),
which is what a tuned scikit-learn probe does. ``C`` means scikit-learn's ``LogisticRegression(C)`` in every case
(``penalty_strength``). The loss is the run's own (class weights, label smoothing, multi-label BCE with
``pos_weight``), the bias is not penalized, and dropout plays no part.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# scikit-learn's C for each fit, strongest penalty first, so each fit starts from the previous (a warm start).
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def penalty_strength(c: float, weight_sum: float, two_class_softmax: bool) -> float:
    """The ``lambda`` for which ``mean loss + lambda * ||W||^2`` has the minimum of scikit-learn's
    ``LogisticRegression(C=c)``, whose objective is ``C * sum_i s_i * loss_i + ||w||^2 / 2`` (``s_i``: the sample's
    class weight, else 1).

    Our loss is a mean: the summed loss divided by ``weight_sum`` (the number of examples; with class weights their
    sum over the examples, torch's weighted mean; multi-label, examples times labels, as BCE averages over both, and
    scikit-learn fits each label on its own, so the labels' objectives add up). Dividing sklearn's objective by
    ``C * weight_sum`` gives ``lambda = 1 / (2 C weight_sum)``.

    Two classes: scikit-learn fits one vector ``w`` (logit ``w.x``), we fit two softmax rows, whose logit difference
    is ``(w1 - w0).x``. At our optimum ``w0 = -w1`` (only the difference moves the loss, and the penalty is least
    there), so ``||w0||^2 + ||w1||^2 = ||w1 - w0||^2 / 2``: the same ``lambda`` penalizes ``w`` half as much, and it
    takes ``2 lambda`` to be scikit-learn's fit.
    """
    return (2.0 if two_class_softmax else 1.0) / (2.0 * c * weight_sum)


def fit_linear(
    linear: torch.nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable,
    c: float,
    max_iter: int = 500,
    weight_sum: float | None = None,
    prior: torch.Tensor | None = None,
) -> tuple[float, int]:
    """Minimize ``loss_fn(linear(x), y) + penalty_strength(c, ...) * ||W||^2`` in place with full-batch L-BFGS, which
    is scikit-learn's ``LogisticRegression(C=c)`` (``weight_sum``: what ``loss_fn``'s mean divides by, default the
    number of label entries in ``y``; pass the sum of the examples' class weights with class weights). Returns
    (training loss without the penalty, iterations used). With ``prior`` (a weight of W's shape, e.g. the
    label_embeddings head) the penalty pulls W toward it instead of toward zero, ``||W - prior||^2``: a strong penalty
    keeps the prior's (zero-shot) classifier and a weak one fits the data."""
    two_class_softmax = y.ndim == 1 and linear.out_features == 2  # (label indices: a softmax, not sigmoids)
    penalty = penalty_strength(c, float(y.numel()) if weight_sum is None else weight_sum, two_class_softmax)
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


# Folds of the cross-validation that chooses C when there is no validation split (scikit-learn's default cv=5),
# fewer when the smallest class has fewer rows.
CV_FOLDS = 5


def cross_validate_c(
    linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, grid, seed: int, prior=None
) -> dict | None:
    """Choose C from ``grid`` by stratified k-fold cross-validation on the training rows, as scikit-learn's
    LogisticRegressionCV does: each fold fits a copy of ``linear`` along the grid (warm-started) and scores its
    held-out rows; the C with the lowest mean held-out loss wins. Returns ``{"C", "folds", "loss", "accuracy",
    "scores"}`` (held-out loss and accuracy at the chosen C, and every C's mean held-out loss), or None when the
    smallest class has fewer than 2 rows (single-label targets only). ``prior``: as ``fit_linear``'s, the weight
    the penalty pulls toward (each fold's C then means what the run's final fit means by it)."""
    import copy

    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    if y.dim() != 1:
        return None
    labels = y.cpu().numpy()
    present = np.bincount(labels)
    folds = min(CV_FOLDS, int(present[present > 0].min()))
    if folds < 2:
        return None
    losses, correct = np.zeros(len(grid)), np.zeros(len(grid))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(np.zeros(len(labels)), labels):
        fit_rows, held_rows = torch.as_tensor(fit_rows), torch.as_tensor(held_rows)
        head = copy.deepcopy(linear)
        for i, c in enumerate(grid):
            fit_linear(head, x[fit_rows], y[fit_rows], loss_fn, c, prior=prior)
            with torch.no_grad():
                logits = head(x[held_rows])
                losses[i] += float(torch.nn.functional.cross_entropy(logits, y[held_rows], reduction="sum"))
                correct[i] += float((logits.argmax(-1) == y[held_rows]).sum())
    best = int(np.argmin(losses))
    n = len(labels)
    return {
        "C": float(grid[best]),
        "folds": folds,
        "loss": losses[best] / n,
        "accuracy": correct[best] / n,
        "scores": {f"{c:g}": losses[i] / n for i, c in enumerate(grid)},
    }
