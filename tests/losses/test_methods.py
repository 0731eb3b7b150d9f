"""The spec's eight losses on small cascades (N = 6) with padding, in both settings.

Values are compared with the plain-loop re-implementation in ``loops.py`` (written from
the spec text, one request and one item at a time) and gradients with its finite
differences, with the stopped-gradient quantities (RankFlow's distillation targets, the
column normalisers of ARF-v2 and LCRON) held at their values at the base point. A few
cases are worked fully by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lcron.errors import DataError
from lcron.losses import build_loss
from lcron.settings import TWO_STAGE

from . import loops
from .spec import EIGHT
from .tiny import TINY, TINY2, TINY3, as_tensors, batch, numeric_grad, set_weights

LN2 = math.log(2.0)

# (method, options for build_loss, keyword arguments of the loop implementation)
VARIANTS = [
    ("bce", {}, {}),
    ("icc", {}, {}),
    ("icc", {"reference_quirks": "true"}, {"reference_quirks": True}),
    ("icc", {"cutoff_tau": 0.5}, {"cutoff_tau": 0.5}),
    ("rankflow", {}, {}),
    ("rankflow", {"ranking_terms": True}, {"ranking_terms": True}),
    ("rankflow", {"ranking_terms": False}, {"ranking_terms": False}),
    ("fs_ranknet", {}, {}),
    ("fs_lambdaloss", {}, {}),
    ("fs_lambdaloss", {"mu": 0.3, "topn": 3}, {"mu": 0.3, "topn": 3}),
    ("arf", {}, {}),
    ("arf", {"tau": 1.0, "k": 3}, {"tau": 1.0, "k": 3}),
    ("arf_v2", {}, {}),
    ("arf_v2", {"tau": "1.5"}, {"tau": 1.5}),
    ("lcron", {}, {}),
    ("lcron", {"k": "quotas", "tau": 1.0}, {"k": "quotas", "tau": 1.0}),
    ("lcron", {"k": 3, "tau": 2.0, "hard_labels": True}, {"k": 3, "tau": 2.0, "hard": True}),
    ("lcron", {"k": 3, "tau": 2.0, "hard_labels": False}, {"k": 3, "tau": 2.0, "hard": False}),
]


# Variants that reproduce a reference quirk letting padding through: their padding logits
# count (and get gradient), so they are not replaced by garbage below.
PADDING_COUNTS = {("icc", "reference_quirks")}


def _lets_padding_through(method, options) -> bool:
    return any((method, k) in PADDING_COUNTS and str(v).lower() == "true" for k, v in options.items())


def test_every_method_of_the_spec_has_a_loop_implementation_and_variants():
    assert set(loops.LOOP_LOSSES) >= set(EIGHT)
    assert {m for m, _, _ in VARIANTS} == set(EIGHT)


def _loop_fn(method, z0, y, mask, setting, kw):
    """The loop loss as a function of the logits, stopped-gradient inputs frozen at ``z0``."""
    impl = loops.LOOP_LOSSES[method]
    frozen = dict(kw)
    if method == "rankflow":
        frozen["teacher"] = z0
    if method in ("arf_v2", "lcron"):
        tau = kw.get("tau", 200.0 if method == "arf_v2" else 50.0)
        frozen["norms"] = loops.column_norms(z0, mask, tau)
    return lambda z: impl(z, y, mask, setting, **frozen)


def _lcron_k(kw, setting):
    if "k" not in kw:
        return kw
    k = kw["k"]
    kw = dict(kw)
    kw["k"] = list(setting.quotas) if k == "quotas" else [k] * setting.num_stages
    return kw


@pytest.mark.parametrize("setting_name", ["tiny2", "tiny3"])
@pytest.mark.parametrize("method,options,loop_kw", VARIANTS,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for m, o, _ in VARIANTS])
def test_loss_and_gradient_match_loop_implementation(setting_name, method, options, loop_kw):
    setting = TINY[setting_name]
    if method == "lcron":
        loop_kw = _lcron_k(loop_kw, setting)
    z, y, mask = batch(setting_name, seed=7)
    loss = build_loss(method, setting=setting, **options)
    zt, yt, mt = as_tensors(z, y, mask)
    padding_counts = _lets_padding_through(method, options)
    if not padding_counts:  # padding logits hold garbage that must not matter
        with torch.no_grad():
            for t in zt:
                t.masked_fill_(mt == 0, 1e3)
    out = loss(zt, yt, mt)
    out.total.backward()
    fn = _loop_fn(method, z, y, mask, setting, loop_kw)
    assert out.total.item() == pytest.approx(fn(z), rel=1e-9, abs=1e-12)
    expected = numeric_grad(fn, z)
    for s, t in enumerate(zt):
        np.testing.assert_allclose(t.grad.numpy(), expected[s], rtol=1e-5, atol=1e-7,
                                   err_msg=f"{method} stage {setting.stage_names[s]}")
        if not padding_counts:
            assert torch.all(t.grad[mt == 0] == 0), "padding received gradient"
    if padding_counts:
        assert any(torch.any(t.grad[mt == 0] != 0) for t in zt), "padding should take part here"
    assert all(torch.isfinite(v) for v in out.parts.values())


@pytest.mark.parametrize("method", ["arf", "arf_v2", "lcron"])
def test_learned_weights_enter_as_half_inverse_square_plus_log(method):
    setting = TINY2
    z, y, mask = batch("tiny2", seed=11)
    options = {"k": "quotas"} if method == "lcron" else {}
    loss = build_loss(method, setting=setting, **options)
    set_weights(loss, [2.0, 0.5])
    zt, yt, mt = as_tensors(z, y, mask)
    out = loss(zt, yt, mt)
    kw = {"weights": [2.0, 0.5]}
    if method == "lcron":
        kw["k"] = list(setting.quotas)
    expected = loops.LOOP_LOSSES[method](z, y, mask, setting, **kw)
    assert out.total.item() == pytest.approx(expected, rel=1e-9)
    out.total.backward()
    assert all(p.grad is not None and p.grad != 0 for p in loss.parameters())
    assert out.parts["weight/retrieval"].item() == 2.0


# (float32 against float64, and integer labels / float masks: test_generic.py, every method.)


@pytest.mark.parametrize("method", ["icc", "fs_lambdaloss", "arf", "arf_v2", "lcron"])
def test_padding_is_the_same_as_dropping_the_slots(method):
    # One request with two padding slots equals the compact request of its 4 valid slots.
    z, y, mask = batch("tiny2", seed=2)
    options = {"k": "2,1"} if method == "lcron" else {}
    loss = build_loss(method, setting=TINY2, **options)
    keep = [0, 2, 3, 5]
    padded = loss(*as_tensors([[zs[1]] for zs in z], [y[1]], [mask[1]])).total
    compact = loss(*as_tensors([[[zs[1][i] for i in keep]] for zs in z], [[y[1][i] for i in keep]],
                               [[1, 1, 1, 1]])).total
    assert mask[1] == [1, 0, 1, 1, 0, 1]
    assert padded.item() == pytest.approx(compact.item(), rel=1e-12)


# ------------------------------------------------------------------------ by hand
@pytest.mark.parametrize("setting", [TINY2, TINY3], ids=["tiny2", "tiny3"])
def test_bce_zero_logits_is_log2_per_stage(setting):
    zeros = [torch.zeros(3, 6, dtype=torch.float64) for _ in setting.stage_names]
    out = build_loss("bce", setting=setting)(zeros, torch.tensor(batch(setting.name)[1]), torch.tensor(batch(setting.name)[2]))
    assert out.total.item() == pytest.approx(setting.num_stages * LN2)
    assert set(out.parts) == {f"single/{s}" for s in setting.stage_names}


@pytest.mark.parametrize("setting", [TINY2, TINY3], ids=["tiny2", "tiny3"])
def test_fs_ranknet_zero_logits_counts_only_groups_with_valid_pairs(setting):
    # Last group all padding: group 0 has valid pairs (with group 1), group 1 has none.
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 1, 0, 0]])
    zeros = [torch.zeros(2, 6, dtype=torch.float64) for _ in setting.stage_names]
    out = build_loss("fs_ranknet", setting=setting)(zeros, torch.tensor([[30, 29, 7, 7, 6, 6]] * 2), mask)
    assert out.total.item() == pytest.approx(setting.num_stages * LN2)


def test_fs_lambdaloss_two_items_by_hand():
    # y = (1, 0), z = (0, 0): ranks (1, 2), IDCG = 1/ln 2, gains (ln 2, 0),
    # u = v = 1/ln 2 - 1/ln 3, w = ln 2 (1/ln 2 - 1/ln 3) = 1 - ln 2 / ln 3 for both orders,
    # each order's BCE is log 2.
    loss = build_loss("fs_lambdaloss", stages=2)
    zeros = [torch.zeros(1, 2, dtype=torch.float64) for _ in range(2)]
    out = loss(zeros, torch.tensor([[1, 0]]), torch.ones(1, 2))
    per_stage = 2 * (1 - LN2 / math.log(3.0)) * LN2
    assert out.total.item() == pytest.approx(2 * per_stage)
    # A request with a single valid slot contributes nothing (not a zero in the mean).
    out2 = loss([torch.zeros(2, 2, dtype=torch.float64)] * 2, torch.tensor([[1, 0], [1, 0]]),
                torch.tensor([[1, 1], [1, 0]]))
    assert out2.total.item() == pytest.approx(2 * per_stage)


def test_icc_ensemble_by_hand_and_fewer_slots_than_the_cutoff():
    from lcron.losses.base import CascadeLoss

    loss = build_loss("icc", setting=TINY2)  # cut-offs 4 (retrieval), 2 (pre-rank)
    z_ret = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    z_pre = torch.tensor([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]], dtype=torch.float64)
    inputs = CascadeLoss.prepare(loss, [z_ret, z_pre], torch.tensor([[30, 29, 7, 7, 6, 6]]), None)
    # kappa_ret = 1 -> I_ret = (1, 1, 1, .5, 0, 0); kappa_pre = 50 -> I_pre = (0, 0, 0, 0, .5, 1);
    # e = (1 - I_ret) z_ret + I_ret I_pre z_pre.
    torch.testing.assert_close(loss.ensemble(inputs.logits, inputs.mask)[0], torch.tensor([0, 0, 0, 0.5, 0, -1], dtype=torch.float64))
    # 3 valid slots < cut-off 4: kappa_ret is the smallest valid score, so everything passes.
    mask = torch.tensor([[1, 0, 1, 0, 1, 0]])
    inputs = CascadeLoss.prepare(loss, [z_ret, z_pre], torch.tensor([[30, 29, 7, 7, 6, 6]]), mask)
    e = loss.ensemble(inputs.logits, inputs.mask)[0]
    # I_ret = (1, ., 1, ., .5, .); kappa_pre = 30 (2nd of 10, 30, 50) -> I_pre = (0, ., .5, ., 1, .)
    torch.testing.assert_close(e[[0, 2, 4]], torch.tensor([0.0, 15.0, 0.5 * 0 + 0.5 * 50], dtype=torch.float64))


@pytest.mark.parametrize("setting", [TINY2, TINY3], ids=["tiny2", "tiny3"])
def test_rankflow_zero_logits_by_hand(setting):
    # Each BCE term is log 2, MSE terms 0, each ranking term -log sigmoid(0) = log 2.
    zeros = [torch.zeros(3, 6, dtype=torch.float64) for _ in setting.stage_names]
    _, y, mask = batch(setting.name)
    out = build_loss("rankflow", setting=setting)(zeros, torch.tensor(y), torch.tensor(mask))
    s = setting.num_stages
    ranking = s - 1 if setting.rankflow_ranking_terms else 0
    assert out.total.item() == pytest.approx((s + ranking) * LN2)
    assert ("rank/retrieval" in out.parts) == setting.rankflow_ranking_terms


def _log(x):
    return math.log(x + 1e-6)


def test_arf_equal_logits_by_hand():
    # Equal logits: every valid row of P is uniform, 1/n. With n = 6, G = 2 GT items:
    # L_global = sum_{r,i} -log(1/6 + eps) L[r, i] / 36 = -log(1/6 + eps) / 6;
    # L_relax(m) = mean_i -log((1/m)(m/6) + eps) t_i = (2/6)(-log(1/6 + eps)).
    zeros = [torch.zeros(1, 6, dtype=torch.float64) for _ in range(2)]
    y = torch.tensor([[30, 29, 7, 7, 6, 6]])
    out = build_loss("arf", setting=TINY2)(zeros, y, None)
    per_stage = 0.5 * (-_log(1 / 6) / 6) + (2 / 6) * (-_log(1 / 6))
    assert out.total.item() == pytest.approx(2 * per_stage)
    assert set(out.parts) == {f"{p}/{s}" for p in ("global", "relax", "weight") for s in ("retrieval", "prerank")}


def test_lcron_equal_logits_by_hand():
    # Uniform P: p_s(i; k) = k/6 (column sums 1), pbar = (6 - k)/6. With k = (3, 2):
    # P_joint = Q_joint = (3/6)(2/6) = 1/6; GT items (2 of 6, t = 1) pay -log(1/6 + eps),
    # the others -log(5/6 + eps). Single stage k: GT -log(k/6 + eps), others -log((6-k)/6 + eps).
    zeros = [torch.zeros(1, 6, dtype=torch.float64) for _ in range(2)]
    y = torch.tensor([[30, 29, 7, 7, 6, 6]])
    out = build_loss("lcron", setting=TINY2, k="3,2")(zeros, y, None)
    e2e = (2 * -_log(1 / 6) + 4 * -_log(5 / 6)) / 6
    single = {k: (2 * -_log(k / 6) + 4 * -_log((6 - k) / 6)) / 6 for k in (3, 2)}
    assert out.parts["e2e"].item() == pytest.approx(e2e)
    assert out.parts["single/retrieval"].item() == pytest.approx(single[3])
    assert out.total.item() == pytest.approx(e2e + 0.5 * single[3] + 0.5 * single[2])


def test_lcron_default_k_skips_single_stage_terms_on_short_lists():
    # Reference k_s = 10 >= n = 6: single-stage terms skip every request; e2e remains.
    z, y, mask = batch("tiny2", seed=1)
    out = build_loss("lcron", setting=TINY2)(*as_tensors(z, y, mask))
    assert out.parts["single/retrieval"].item() == 0 and out.parts["single/prerank"].item() == 0
    assert out.total.item() == pytest.approx(out.parts["e2e"].item())


def test_arf_relax_skips_requests_with_at_most_m_valid_slots():
    # Retrieval quota 4: the request with 4 valid slots gives no retrieval L_relax term.
    z, y, mask = batch("tiny2", seed=4)
    only_short = build_loss("arf", setting=TINY2)(*as_tensors([[zs[2]] for zs in z], [y[2]], [mask[2]]))
    assert sum(mask[2]) == 4
    assert only_short.parts["relax/retrieval"].item() == 0
    assert only_short.parts["relax/prerank"].item() > 0


def test_three_stage_defaults_follow_the_setting_table():
    lc = build_loss("lcron", stages=3)
    assert lc.hard_labels is True and lc.k == (10, 10, 10)
    assert build_loss("lcron", stages=2).hard_labels is False
    assert build_loss("icc", stages=3).cutoffs == (40, 30, 20)
    assert build_loss("icc", stages=3, reference_quirks=True).cutoffs == (40, 30, 30)
    assert build_loss("rankflow", stages=3).ranking_terms and not build_loss("rankflow", stages=2).ranking_terms
    assert build_loss("arf", stages=2).k == TWO_STAGE.gt_size == 10


def test_icc_reference_mode_lets_padding_through_with_the_loaders_labels():
    from lcron.settings import get_setting

    # The reference loader's label for an empty slot: the top group's position 0, else the group's label.
    assert get_setting(stages=2).reference_padding_labels == (30,) * 10 + (7,) * 10 + (6,) * 10 + (5,) * 10
    assert get_setting(stages=3).reference_padding_labels == (30,) * 10 + (8,) * 10 + (7,) * 10 + (6,) * 10 + (5,) * 10
    # All logits 0: every pair's BCE is ln 2. One request, top-group slot 1 padded: the default
    # mode averages the 10 valid pairs; reference mode sums all 15 pairs over B N N = 36.
    zeros = [torch.zeros(1, 6, dtype=torch.float64) for _ in TINY2.stage_names]
    labels, mask = torch.tensor([[29, 0, 7, 7, 6, 6]]), torch.tensor([[1, 0, 1, 1, 1, 1]])
    assert build_loss("icc", setting=TINY2)(zeros, labels, mask).total.item() == pytest.approx(LN2)
    quirks = build_loss("icc", setting=TINY2, reference_quirks=True)
    assert quirks(zeros, labels, mask).total.item() == pytest.approx(15 * LN2 / 36)
    # Reference mode scores a padded slot exactly as a valid one carrying the loader's label
    # (30 in the top group, above the real top item's 29) and the model's logit for it.
    low = [torch.tensor([[0.0, -5.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64) for _ in TINY2.stage_names]
    relabelled = labels.clone()
    relabelled[0, 1] = 30
    full = torch.ones_like(mask)
    assert quirks(low, labels, mask).total.item() == pytest.approx(quirks(low, relabelled, full).total.item())
    # Lists without the setting's slot layout cannot carry its padding labels.
    with pytest.raises(DataError, match="list size N = 5"):
        quirks([torch.zeros(1, 5)] * 2, torch.ones(1, 5), None)
