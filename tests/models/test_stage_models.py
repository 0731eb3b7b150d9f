"""Stage models and the cascade: shapes, candidate independence, DSSM towers, gradients, seeds."""

from __future__ import annotations

import pytest
import torch

from lcron.models import DIN, DSSM, MLP, MODELS, Cascade, build_cascade, build_model
from lcron.models.layers import masked_mean
from lcron.settings import THREE_STAGE, TWO_STAGE, Setting
from .model_batches import SIZES, make_batch


def test_models_registry():
    assert MODELS == {"dssm": DSSM, "din": DIN, "mlp": MLP}


@pytest.mark.parametrize("setting", [TWO_STAGE, THREE_STAGE])
def test_cascade_shapes_builtin_settings(setting):
    torch.manual_seed(0)
    cascade = build_cascade(setting.name, SIZES)
    assert list(cascade.stages) == list(setting.stage_names)
    assert [type(m).__name__.lower() for m in cascade.models] == list(setting.stage_models)
    batch = make_batch(b=2, n=setting.list_size, seq_len=50, seed=0)
    logits = cascade(batch)
    assert len(logits) == setting.num_stages
    for z in logits:
        assert z.shape == (2, setting.list_size) and z.dtype == torch.float32 and torch.isfinite(z).all()
    assert cascade.retrieval is cascade.stages["retrieval"]


def test_cascade_custom_setting_and_rebuild_from_config():
    custom = Setting.from_dict({"name": "din_first_then_mlp", "base": "three_stage",
                                "stage_names": ["recall", "rank"], "stage_models": ["dssm", "din"],
                                "quotas": [25, 10], "bce_groups": [5, 2], "icc_coefficients": [1.0, 2.0]})
    torch.manual_seed(1)
    cascade = build_cascade(custom, SIZES, dim=4)
    batch = make_batch(b=3, n=7, seq_len=5, seed=1)                     # any N and L work
    logits = cascade(batch)
    assert [z.shape for z in logits] == [(3, 7), (3, 7)]
    assert list(cascade.stages) == ["recall", "rank"]
    rebuilt = build_cascade(**cascade.config())
    rebuilt.load_state_dict(cascade.state_dict())
    for a, b in zip(rebuilt(batch), logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dssm", "din", "mlp"])
def test_permuting_candidates_permutes_logits(kind):
    torch.manual_seed(0)
    model = build_model(kind, SIZES)
    batch = make_batch(b=3, n=8, seq_len=6, seed=5)
    perm = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
    out = model(batch)
    permuted = model(dict(batch, items=batch["items"][:, perm]))
    torch.testing.assert_close(permuted, out[:, perm], rtol=1e-6, atol=1e-6)
    # a candidate's logit does not depend on the other candidates
    alone = model(dict(batch, items=batch["items"][:, 2:3]))
    torch.testing.assert_close(alone, out[:, 2:3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["dssm", "din", "mlp"])
def test_model_reads_only_feature_arrays(kind):
    torch.manual_seed(0)
    model = build_model(kind, SIZES)
    batch = make_batch(seed=6)
    out = model(batch)
    with_labels = dict(batch, label=torch.randint(0, 30, out.shape), mask=torch.zeros(out.shape))
    torch.testing.assert_close(model(with_labels), out, rtol=0, atol=0)


def test_dssm_forward_is_dot_of_towers():
    torch.manual_seed(0)
    model = DSSM(SIZES)
    batch = make_batch(b=3, n=5, seq_len=6, seed=7)
    u = model.user_vectors({k: v for k, v in batch.items() if k != "items"})
    v = model.item_vectors(batch["items"])
    assert u.shape == (3, 32) and v.shape == (3, 5, 32) and model.vector_dim == 32
    torch.testing.assert_close(model(batch), (u[:, None, :] * v).sum(-1), rtol=1e-5, atol=1e-5)
    # the item tower runs on a flat corpus too
    corpus = batch["items"].reshape(-1, 8)
    torch.testing.assert_close(model.item_vectors(corpus), v.reshape(-1, 32), rtol=0, atol=0)


def test_masked_mean_hand_checked():
    seq = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(masked_mean(seq, mask), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    cascade = build_cascade(THREE_STAGE, SIZES)                        # DSSM, MLP and DIN
    batch = make_batch(b=4, n=6, seq_len=5, seed=8)
    weights = torch.randn(4, 6)
    sum((z * weights).sum() for z in cascade(batch)).backward()
    for name, p in cascade.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_same_seed_same_weights_whatever_the_size_order():
    torch.manual_seed(3)
    a = build_cascade(TWO_STAGE, SIZES)
    torch.manual_seed(3)
    b = build_cascade(TWO_STAGE, dict(reversed(list(SIZES.items()))))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    torch.manual_seed(4)
    c = build_cascade(TWO_STAGE, SIZES)
    key = "stages.prerank.head.0.weight"
    assert not torch.equal(c.state_dict()[key], a.state_dict()[key])
    # the models of a cascade share no parameter
    ids = [id(p) for m in a.models for p in m.parameters()]
    assert len(ids) == len(set(ids))


def test_layer_sizes_follow_the_spec():
    d = 8
    din, dssm, mlp = DIN(SIZES), DSSM(SIZES), MLP(SIZES)
    linear = lambda net: [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    assert linear(din.attention) == [(10 * d, 80), (80, 1)]
    assert linear(din.head) == [(21 * d, 128), (128, 128), (128, 32), (32, 1)]
    assert linear(dssm.user_tower) == [(13 * d, 128), (128, 64), (64, 32)]
    assert linear(dssm.item_tower) == [(8 * d, 128), (128, 64), (64, 32)]
    assert linear(mlp.head) == [(21 * d, 128), (128, 64), (64, 32), (32, 1)]
    relus = lambda net: sum(isinstance(m, torch.nn.ReLU) for m in net)
    assert (relus(din.attention), relus(din.head), relus(dssm.user_tower), relus(mlp.head)) == (1, 3, 2, 3)
    assert isinstance(build_cascade(2, SIZES), Cascade)
