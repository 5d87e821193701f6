"""Each initializer against its defining property, plus the registry, rules and reports."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bertcls import BertclsError, apply_init, describe_init, register_initializer
from bertcls.init import INITIALIZERS, init_tensor, parse_init


def filled(spec, shape=(400, 600), seed=0) -> torch.Tensor:
    t = torch.empty(shape)
    init_tensor(t, spec, torch.Generator().manual_seed(seed))
    return t


def close(a: float, b: float, rel: float = 0.05) -> bool:
    return abs(a - b) <= rel * abs(b)


def test_xavier_variance():
    fan_out, fan_in = 400, 600
    target = 2.0 / (fan_in + fan_out)
    for name in ("xavier_uniform", "xavier_normal"):
        w = filled(name)
        assert close(w.var().item(), target), name
        assert abs(w.mean().item()) < 1e-3
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert filled("xavier_uniform").abs().max().item() <= bound


def test_kaiming_variance_follows_mode_and_nonlinearity():
    w = filled({"name": "kaiming_normal", "mode": "fan_in", "nonlinearity": "relu"})
    assert close(w.var().item(), 2.0 / 600)
    w = filled({"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"})
    assert close(w.var().item(), 2.0 / 400)
    w = filled({"name": "kaiming_uniform", "mode": "fan_in", "nonlinearity": "linear"})
    assert close(w.var().item(), 1.0 / 600)
    assert w.abs().max().item() <= math.sqrt(3.0 / 600)


def test_orthogonal_rows_and_gain():
    w = filled({"name": "orthogonal", "gain": 2.0}, shape=(64, 256))
    assert torch.allclose(w @ w.T, 4.0 * torch.eye(64), atol=1e-4)
    tall = filled("orthogonal", shape=(256, 64))
    assert torch.allclose(tall.T @ tall, torch.eye(64), atol=1e-4)


def test_normal_and_truncated_normal():
    assert close(filled("normal").std().item(), 0.02)
    assert close(filled({"name": "normal", "std": 0.5}).std().item(), 0.5)
    t = filled({"name": "trunc_normal", "std": 0.1})
    assert t.abs().max().item() <= 0.2 + 1e-6
    assert t.abs().max().item() > 0.19


def test_exact_constants():
    assert torch.count_nonzero(filled("zeros")) == 0
    assert torch.all(filled("ones") == 1.0)
    assert torch.all(filled({"name": "constant", "value": 0.25}) == 0.25)
    u = filled({"name": "uniform", "a": -0.1, "b": 0.3})
    assert u.min().item() >= -0.1 and u.max().item() <= 0.3


def test_sparse_has_exact_zeros_per_column():
    rows, cols = 50, 30
    w = filled({"name": "sparse", "sparsity": 0.1, "std": 0.05}, shape=(rows, cols))
    zeros_per_column = (w == 0).sum(0)
    assert torch.all(zeros_per_column == math.ceil(0.1 * rows))


def test_bert_init_uses_given_std():
    t = torch.empty(500, 500)
    init_tensor(t, "bert", torch.Generator().manual_seed(0), std=0.05)
    assert close(t.std().item(), 0.05)


# label_embeddings reads the encoder, not the generator (tests/test_fewshot.py).
@pytest.mark.parametrize("name", sorted(set(INITIALIZERS) - {"label_embeddings"}))
def test_deterministic_under_seed(name):
    assert torch.equal(filled(name, (20, 30), seed=3), filled(name, (20, 30), seed=3))
    if name not in ("zeros", "ones", "constant"):
        assert not torch.equal(filled(name, (20, 30), seed=3), filled(name, (20, 30), seed=4))


def test_unknown_name_and_parameter_list_valid_choices():
    with pytest.raises(BertclsError, match="unknown initializer 'xavier'.*xavier_uniform"):
        parse_init("xavier")
    with pytest.raises(BertclsError, match="no parameter stdev.*valid: mean, std"):
        parse_init({"name": "normal", "stdev": 1})


def test_user_registered_initializer():
    @register_initializer("halves")
    def halves(t, *, generator=None):
        return nn.init.constant_(t, 0.5)

    try:
        assert torch.all(filled("halves", (3, 3)) == 0.5)
    finally:
        del INITIALIZERS["halves"]


def test_apply_init_cnn_recipe():
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    count = apply_init(
        net,
        {
            nn.Conv2d: {"weight": {"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"}},
            "BatchNorm2d": {"weight": "ones", "bias": "zeros"},
            nn.Linear: {"weight": {"name": "constant", "value": 0.1}, "bias": {"name": "constant", "value": 0.2}},
        },
        generator=torch.Generator().manual_seed(0),
    )
    assert count == 3
    conv, bn, lin = net[0], net[1], net[4]
    assert close(conv.weight.var().item(), 2.0 / (64 * 9), rel=0.1)
    assert torch.count_nonzero(conv.bias) == 0
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(lin.weight == 0.1) and torch.all(lin.bias == 0.2)


def test_apply_init_checks_every_rule_before_touching_weights():
    lin = nn.Linear(4, 4)
    before = lin.weight.clone()
    with pytest.raises(BertclsError):
        apply_init(nn.Sequential(lin), {nn.Linear: "zeros", nn.Conv2d: "nonsense"})
    assert torch.equal(lin.weight, before)


def test_describe_init_reports_layer_stats_and_logit_std():
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    report = describe_init(net, None)
    assert [s.shape for s in report.layers] == [(8, 16), (3, 8)]
    assert report.layers[0].fan_in == 16 and report.layers[0].fan_out == 8
    assert close(report.layers[0].weight_std, net[0].weight.std().item(), rel=1e-4)
    assert report.logits_std is None and report.initial_loss is None
    assert "fan_in" in str(report) and "logits" not in str(report)


class Scaled(nn.Module):
    """A 5-label classifier on plain features whose output is scaled: logits of a known spread."""

    def __init__(self, scale: float):
        super().__init__()
        self.linear = nn.Linear(32, 5)
        self.dropout = nn.Dropout(0.5)  # must be off while the report is made
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(self.dropout(x))


def test_describe_init_logit_std_and_initial_loss_on_a_batch():
    torch.manual_seed(0)
    x, y = torch.randn(256, 32), torch.randint(0, 5, (256,))
    small, large = Scaled(0.01), Scaled(100.0)
    for net in (small, large):
        net.train()
        report = describe_init(net, {"x": x, "labels": y})
        with torch.no_grad():
            logits = net.scale * net.linear(x)  # no dropout: the report is made in eval mode
        assert report.logits_std == pytest.approx(logits.std().item(), rel=1e-5)
        assert report.initial_loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
        assert report.expected_loss == pytest.approx(math.log(5))
        assert net.training  # put back as it was
        assert f"std of logits on the batch: {report.logits_std:.4f}" in str(report)
        assert f"initial loss on the batch: {report.initial_loss:.4f} (uniform predictions: 1.6094)" in str(report)
    # near-zero logits score about ln(5); large ones are confidently wrong about half the time: far above it
    assert describe_init(small, {"x": x, "labels": y}).initial_loss == pytest.approx(math.log(5), abs=0.01)
    assert describe_init(large, {"x": x, "labels": y}).initial_loss > 5 * math.log(5)
    assert describe_init(small, {"x": x}).initial_loss is None  # no labels, no loss


def test_describe_init_on_a_bert_classifier_batch(tiny_bert):
    from bertcls import BertForTextClassification
    from bertcls.data import TextClassificationDataset

    texts = ["a gripping film", "dull and flat", "the plot was lovely", "weak ending", "good", "boring movie"]
    labels = ["positive", "negative", "positive", "negative", "positive", "negative"]
    names = ["negative", "positive", "neutral"]
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=names, seed=0)
    ds = TextClassificationDataset(texts, labels, model.tokenizer, max_length=32, label_names=names)
    batch = ds.collate([ds[i] for i in range(len(texts))])
    report = describe_init(model, batch)
    assert [s.shape for s in report.layers] == [(3, 32)]  # the head only, not the backbone's Linears
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert report.logits_std == pytest.approx(logits.std().item(), rel=1e-5)
    assert report.initial_loss == pytest.approx(nn.functional.cross_entropy(logits, batch["labels"]).item(), rel=1e-5)
    assert report.expected_loss == pytest.approx(math.log(3))

    multi = BertForTextClassification.from_pretrained(tiny_bert, labels=names, seed=0, task="multi_label")
    targets = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.float)
    report = describe_init(multi, {k: v for k, v in batch.items() if k != "labels"} | {"labels": targets})
    multi.eval()
    with torch.no_grad():
        logits = multi(**{k: v for k, v in batch.items() if k != "labels"}).logits
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
    assert report.initial_loss == pytest.approx(bce, rel=1e-5)
    assert report.expected_loss == pytest.approx(math.log(2))  # a sigmoid per label at 0.5
