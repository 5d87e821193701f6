"""BertForTextClassification: initializer honoured, backbone untouched, save/load exact, freezing, safety."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from bertcls import BertclsError, BertForTextClassification, TextClassificationDataset, speed
from bertcls.init import init_tensor
from bertcls.speed import toplayer

from .conftest import linear_output_dtypes, write_tiny_encoder

LABELS = ["negative", "positive"]
TEXTS = ["a good film", "the plot was very dull and weak", "quite lovely", "bad"]


def batch_for(model, texts=TEXTS):
    ds = TextClassificationDataset(texts, None, model.tokenizer, max_length=32)
    return ds.collate([ds[i] for i in range(len(ds))])


def test_new_head_carries_exactly_the_initializer_asked_for(tiny_bert):
    spec = {"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"}
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, head_init=spec, seed=7)
    expected_w, expected_b = torch.empty(2, 32), torch.empty(2)
    g = torch.Generator().manual_seed(7)
    init_tensor(expected_w, spec, g)
    init_tensor(expected_b, "zeros", g)
    lin = model.head.layers[-1]
    assert torch.equal(lin.weight, expected_w)
    assert torch.equal(lin.bias, expected_b)


def test_head_initialization_leaves_pretrained_backbone_untouched(tiny_bert):
    reference = AutoModel.from_pretrained(tiny_bert).state_dict()
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, head_init="orthogonal", seed=1)
    ours = model.backbone.state_dict()
    assert set(ours) == set(reference)
    for k, v in reference.items():
        assert torch.equal(ours[k], v), k


def test_bert_initializer_uses_backbone_initializer_range(tmp_path):
    from transformers import BertConfig, BertModel

    from .conftest import vocab

    d = write_tiny_encoder(tmp_path / "enc")
    BertModel(
        BertConfig(
            vocab_size=len(vocab()),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            initializer_range=0.3,
        )
    ).save_pretrained(d)
    model = BertForTextClassification.from_pretrained(d, labels=[str(i) for i in range(200)], head_init="bert")
    assert abs(model.head.layers[-1].weight.std().item() - 0.3) < 0.03


def test_save_load_gives_bitwise_identical_logits(tiny_model, tmp_path):
    tiny_model.eval()
    b = batch_for(tiny_model)
    tiny_model.save_pretrained(tmp_path / "ckpt")
    again = BertForTextClassification.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(tiny_model(**b).logits, again(**b).logits)
    assert again.labels == LABELS
    assert again.max_length == tiny_model.max_length


def test_fine_tuned_head_survives_save_and_load(tiny_model, tmp_path):
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
    b = batch_for(tiny_model)
    before = tiny_model.head.layers[-1].weight.clone()
    loss = tiny_model(**b, labels=torch.tensor([1, 0, 1, 0])).loss
    loss.backward()
    opt.step()
    assert not torch.equal(before, tiny_model.head.layers[-1].weight)
    tiny_model.save_pretrained(tmp_path / "ckpt")
    again = BertForTextClassification.from_pretrained(tmp_path / "ckpt")
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_loading_a_checkpoint_draws_no_random_weights(tiny_model, tmp_path):
    # Every weight is replaced by the saved one, so none is drawn first (start-up time; the caller's RNG untouched).
    tiny_model.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    again = BertForTextClassification.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(torch.rand(3), expected)
    trainable = {n: p.requires_grad for n, p in tiny_model.named_parameters()}
    assert {n: p.requires_grad for n, p in again.named_parameters()} == trainable


def test_checkpoint_files_are_safetensors_and_json(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"model.safetensors", "bertcls_config.json", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((tmp_path / "ckpt" / "bertcls_config.json").read_text())
    assert config["head"]["labels"] == LABELS and config["backbone_config"]["model_type"] == "bert"


def test_save_replaces_an_older_checkpoint_whole(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "stale.txt").write_text("x")
    tiny_model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left behind


def test_freeze_backbone_trains_head_only_and_keeps_backbone_in_eval(tiny_bert):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, freeze_backbone=True, dropout=0.0)
    model.train()
    assert not model.backbone.training
    assert model.head.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    model(**batch_for(model), labels=torch.tensor([1, 0, 1, 0])).loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.layers[-1].weight.grad is not None


def test_unfreeze_top_k_trains_only_the_top_layers(tiny_bert):
    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=LABELS, freeze_backbone=True, unfreeze_top_k=1, pooling="pooler"
    )
    model.train()
    trainable = {
        n.split(".")[1] + "." + n.split(".")[3] if ".layer." in n else n.split(".")[1]
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("backbone.")
    }
    assert trainable == {"encoder.1", "pooler"}
    assert model.backbone.encoder.layer[1].training
    assert not model.backbone.encoder.layer[0].training
    assert not model.backbone.embeddings.training
    with pytest.raises(BertclsError, match="unfreeze_top_k"):
        model.set_trainable(True, 5)


def test_unfreeze_top_k_without_a_frozen_backbone_is_refused(tiny_bert):
    # It used to be set to 0 without a word: the user asked for something that did not happen.
    with pytest.raises(BertclsError, match="unfreeze_top_k=1 .*set freeze_backbone=true, or unfreeze_top_k=0"):
        BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, unfreeze_top_k=1)
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    with pytest.raises(BertclsError, match="unfreeze_top_k=1"):
        model.set_trainable(False, 1)


@pytest.mark.parametrize(("freeze", "top_k"), [(False, 0), (True, 0), (True, 1)])
def test_the_run_and_the_model_agree_on_a_fully_frozen_backbone(tiny_bert, freeze, top_k):
    from bertcls.config import Config
    from bertcls.train import uses_cache

    cfg = Config()
    cfg.model.freeze_backbone, cfg.model.unfreeze_top_k = freeze, top_k
    model = BertForTextClassification.from_pretrained(
        tiny_bert, labels=LABELS, freeze_backbone=freeze, unfreeze_top_k=top_k
    )
    assert uses_cache(cfg) == model.backbone_fully_frozen == (freeze and not top_k)


def test_unused_pooler_gets_no_gradients(tiny_model):
    # Under DDP a parameter that wants a gradient but gets none is an error.
    assert not any(p.requires_grad for p in tiny_model.backbone.pooler.parameters())


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean"])
def test_pooling_choices(tiny_bert, pooling):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, pooling=pooling).eval()
    b = batch_for(model)
    feats = model.features(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
    with torch.no_grad():
        out = model.backbone(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    if pooling == "cls":
        expected = out.last_hidden_state[:, 0]
    elif pooling == "pooler":
        expected = out.pooler_output
    else:
        m = b["attention_mask"].unsqueeze(-1).float()
        expected = (out.last_hidden_state * m).sum(1) / m.sum(1)
    assert torch.allclose(feats, expected, atol=1e-6)


def test_mean_pooling_ignores_padding(tiny_bert):
    model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, pooling="mean").eval()
    alone = model.predict_proba(["a good film"])
    padded = model.predict_proba(["a good film", "the plot was very dull and weak and the ending was flat"])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_other_encoders(tmp_path, kind):
    d = write_tiny_encoder(tmp_path / kind, kind)
    model = BertForTextClassification.from_pretrained(d, labels=LABELS, pooling="mean", hidden_sizes=[16])
    out = model(**batch_for(model), labels=torch.tensor([0, 1, 0, 1]))
    assert out.logits.shape == (4, 2) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path / "ckpt")
    again = BertForTextClassification.from_pretrained(tmp_path / "ckpt")
    assert type(again.backbone) is type(model.backbone)


def test_pooler_pooling_on_a_backbone_without_pooler(tmp_path):
    d = write_tiny_encoder(tmp_path / "db", "distilbert")
    model = BertForTextClassification.from_pretrained(d, labels=LABELS, pooling="pooler")
    with pytest.raises(BertclsError, match="pooler"):
        model(**batch_for(model))


def test_mlp_head_and_symmetry_warning(tiny_bert):
    with pytest.warns(UserWarning, match="symmetry"):
        model = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, hidden_sizes=[8], head_init="zeros")
    assert len([m for m in model.head.layers if isinstance(m, torch.nn.Linear)]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, head_init="zeros")  # one layer: fine


def test_predict_returns_label_names_and_probabilities(tiny_model):
    out = tiny_model.predict(["a gripping, beautiful film", "awful"])
    assert len(out) == 2
    for row in out:
        assert row["label"] in LABELS
        assert set(row["probabilities"]) == set(LABELS)
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
        assert row["score"] == max(row["probabilities"].values())
    single = tiny_model.predict("awful")
    assert single[0]["probabilities"] == pytest.approx(out[1]["probabilities"], abs=1e-6)


def test_predict_keeps_input_order_across_length_sorted_batches(tiny_model):
    texts = [("good " * n).strip() for n in (1, 9, 3, 12, 2)]
    together = tiny_model.predict_proba(texts, batch_size=2)
    one_by_one = torch.cat([tiny_model.predict_proba([t]) for t in texts])
    assert torch.allclose(together, one_by_one, atol=1e-5)


def test_predict_precision(tiny_model):
    texts = ["a gripping, beautiful film", "awful", "good " * 9]
    with linear_output_dtypes() as full_dtypes:
        full = tiny_model.predict_proba(texts)  # the method's default: full precision
    with linear_output_dtypes() as bf16_dtypes:
        bf16 = tiny_model.predict_proba(texts, precision="bf16")
    # the matmuls inside the forward pass (backbone and head) ran at the precision asked for
    assert full_dtypes and {d for _, d in full_dtypes} == {torch.float32}
    assert bf16_dtypes and {d for _, d in bf16_dtypes} == {torch.bfloat16}
    assert torch.allclose(full, tiny_model.predict_proba(texts, precision="no"))
    assert torch.allclose(bf16, full, atol=0.02) and not torch.equal(bf16, full)  # bf16 ran, and only rounded
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.sum(-1), torch.ones(3), atol=1e-5)
    with pytest.raises(BertclsError, match="unknown precision 'fp8'"):
        tiny_model.predict(texts, precision="fp8")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pooling": "max"}, "unknown pooling 'max'; valid: cls, mean, pooler"),
        ({"head_init": "glorot"}, "unknown initializer 'glorot'"),
        ({"dropout": 1.5}, "dropout"),
        ({"activation": "swishy"}, "unknown activation"),
    ],
)
def test_bad_options_are_clear_errors(tiny_bert, kwargs, match):
    with pytest.raises(BertclsError, match=match):
        BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, **kwargs)


def test_backbone_needs_labels_and_a_real_folder(tiny_bert, tmp_path):
    with pytest.raises(BertclsError, match="pass labels"):
        BertForTextClassification.from_pretrained(tiny_bert)
    with pytest.raises(BertclsError, match="does not exist"):
        BertForTextClassification.from_pretrained(tmp_path / "nope", labels=LABELS)
    with pytest.raises(BertclsError, match="at least 2 labels"):
        BertForTextClassification.from_pretrained(tiny_bert, labels=["only"])


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, tiny_bert):
    import pickle

    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text((tiny_bert / "config.json").read_text())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(BertclsError, match="only pickle weights"):
        BertForTextClassification.from_pretrained(d, labels=LABELS)
    assert not marker.exists()


def test_corrupt_or_incomplete_checkpoints(tiny_model, tmp_path):
    ck = tmp_path / "ckpt"
    tiny_model.save_pretrained(ck)
    weights = ck / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(BertclsError, match="corrupt"):
        BertForTextClassification.from_pretrained(ck)

    weights.unlink()
    with pytest.raises(BertclsError, match="no model weights"):
        BertForTextClassification.from_pretrained(ck)

    weights.write_bytes(good)
    cfg = ck / "bertcls_config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(BertclsError, match="corrupt or truncated"):
        BertForTextClassification.from_pretrained(ck)

    config = json.loads(text)
    config["head"]["labels"] = ["a", "b", "c"]
    cfg.write_text(json.dumps(config))
    with pytest.raises(BertclsError, match="do not match"):
        BertForTextClassification.from_pretrained(ck)


def test_checkpoint_labels_cannot_be_swapped(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(BertclsError, match="was trained for labels"):
        BertForTextClassification.from_pretrained(tmp_path / "ckpt", labels=["x", "y"])


def test_extra_weights_in_checkpoint_are_reported(tiny_model, tmp_path):
    ck = tmp_path / "ckpt"
    tiny_model.save_pretrained(ck)
    state = load_file(ck / "model.safetensors")
    state["head.extra"] = torch.zeros(1)
    save_file(state, ck / "model.safetensors")
    with pytest.raises(BertclsError, match="unexpected"):
        BertForTextClassification.from_pretrained(ck)


def test_fast_dropout_drops_p_and_scales_like_torch():
    from bertcls.speed.dropout import FastDropout, dropout

    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005  # binomial std is about 0.0007
    # each of the four 16-bit lanes of a 64-bit draw drops at the same rate (a lane with a stuck bit would not)
    per_lane = (y == 0).float().view(-1, 4).mean(0)
    assert torch.all((per_lane - 0.1).abs() < 0.01), per_lane  # std about 0.0013 per lane
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    y.sum().backward()  # the gradient flows through the kept elements only, with the same scale
    assert torch.equal(x.grad, y.detach())
    # the same seed gives the same mask; the masks of two calls differ
    torch.manual_seed(1)
    a, b = dropout(torch.ones(1000), 0.5), dropout(torch.ones(1000), 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(torch.ones(1000), 0.5)) and not torch.equal(a, b)
    # bfloat16 keeps its dtype; eval mode and p=0 are the identity
    assert dropout(torch.ones(10, dtype=torch.bfloat16), 0.1).dtype == torch.bfloat16
    d = FastDropout(0.3).eval()
    z = torch.randn(50)
    assert d(z) is z and dropout(z, 0.0) is z


def test_model_uses_fast_dropout_everywhere(tiny_model):
    from bertcls.speed.dropout import FastDropout

    speed.apply(tiny_model)
    kinds = {type(m) for m in tiny_model.modules() if isinstance(m, torch.nn.Dropout)}
    assert kinds == {FastDropout}


@pytest.mark.parametrize(
    ("kind", "pooling"),  # DistilBERT has no pooler layer
    [("bert", "cls"), ("bert", "pooler"), ("roberta", "cls"), ("roberta", "pooler"), ("distilbert", "cls")],
)
def test_top_layer_first_token_only_gives_the_same_logits_and_gradients(tmp_path, kind, pooling):
    # cls/pooler pooling reads the top layer at position 0 only; computing just that position changes nothing.
    folder = write_tiny_encoder(tmp_path / kind, kind)
    results = {}
    for fast in (True, False):  # the same weights twice (same folder, same seed), with and without the short path
        model = BertForTextClassification.from_pretrained(folder, labels=LABELS, pooling=pooling, dropout=0.0, seed=0)
        if fast:
            assert toplayer.install(model)
        for module in model.modules():  # no dropout anywhere, so train-mode passes are deterministic
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        batch = model.tokenizer(
            ["good", "a very bad and boring film", "fine , i guess"], padding=True, return_tensors="pt"
        )
        logits = model(**batch).logits
        logits.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fast] = logits.detach(), grads
        if fast:  # the backbone called directly still returns every position
            assert model.backbone(**batch).last_hidden_state.shape[1] == batch["input_ids"].shape[1]
    (fast_logits, fast_grads), (full_logits, full_grads) = results[True], results[False]
    assert torch.allclose(fast_logits, full_logits, atol=1e-6)
    assert fast_grads.keys() == full_grads.keys()  # every weight of the top layer still gets a gradient
    for name in full_grads:
        assert torch.allclose(fast_grads[name], full_grads[name], atol=1e-5), name


def test_top_layer_keeps_every_position_for_mean_pooling_and_other_backbones(tiny_bert):
    mean = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS, pooling="mean")
    speed.apply(mean)
    calls = []
    top = mean.encoder_layers()[-1]
    top.register_forward_hook(lambda mod, args, out: calls.append(out.shape[1]))
    mean.eval()(**mean.tokenizer(["a good film"], return_tensors="pt"))
    assert calls and calls[0] > 1
    # a layer of neither known layout runs unchanged
    other = BertForTextClassification.from_pretrained(tiny_bert, labels=LABELS)
    layers = other.encoder_layers()
    assert toplayer.install(other)
    del layers[-1].attention.output  # no longer shaped like BertLayer (nor like DistilBERT's block)
    assert not toplayer.install(other)


def test_attention_with_fast_dropout_matches_sdpa_and_drops_weights():
    from torch.nn import functional as F

    from bertcls.speed.dropout import sdpa_with_fast_dropout

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[0, :, :, 4:] = False  # the first text has 3 pad tokens
    module = torch.nn.Module()
    # p small enough that the 16-bit mask keeps everything: the unfused maths equals SDPA's
    out, _ = sdpa_with_fast_dropout(module, q, k, v, mask, dropout=1e-9, scaling=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-6)
    # with dropout, ones for values make each output the sum of kept weights, scaled: about 1 on average
    ones = torch.ones(3, 2, 7, 8)
    outs = torch.stack([sdpa_with_fast_dropout(module, q, k, ones, mask, dropout=0.5)[0] for _ in range(200)])
    assert not torch.allclose(outs[0], outs[1]) and abs(outs.mean().item() - 1.0) < 0.02


def test_models_use_the_fast_dropout_attention(tiny_model):
    from bertcls.speed.dropout import ATTENTION

    speed.apply(tiny_model)
    assert tiny_model.backbone.config._attn_implementation == ATTENTION
