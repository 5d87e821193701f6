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
