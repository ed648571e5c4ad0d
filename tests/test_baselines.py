"""LfF, DisEnt and BiasEnsemble: each mechanism pinned down on hand-made inputs."""
import dataclasses
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffinject.config.builder import experiment_config
from diffinject.methods import get_method, table_methods
from diffinject.methods.bias_ensemble import committee_config, committee_vote, true_label_probabilities
from diffinject.methods.disent import DisentNet, Encoder
from diffinject.methods.registry import train_method
from diffinject.methods.sample_ema import SampleLossEMA, relative_difficulty
from diffinject.nets.classifiers import MLP
from diffinject.training.loop import Preprocess, TrainContext, TrainData, fit


def test_registry_lists_the_table_methods_in_order():
    assert table_methods() == ["vanilla", "lff", "lff_be", "disent", "disent_be", "a2", "amplibias", "diffinject"]


def test_ema_first_sighting_then_exponential_update():
    ema = SampleLossEMA(np.array([0, 0, 1, 1]), num_classes=2, alpha=0.7)
    ema.update(torch.tensor([0, 2]), torch.tensor([2.0, 4.0]))
    assert ema.values.tolist() == [2.0, 0.0, 4.0, 0.0]  # first sighting: the loss itself
    ema.update(torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
    assert ema.values[0].item() == pytest.approx(0.7 * 2.0 + 0.3 * 1.0)
    assert ema.values[1].item() == 3.0  # sample 1's first sighting
    assert ema.seen.tolist() == [True, True, True, False]


def test_weights_use_class_wise_max_normalisation():
    labels = np.array([0, 0, 1, 1])
    ema_b, ema_d = SampleLossEMA(labels, 2, 0.7), SampleLossEMA(labels, 2, 0.7)
    index = torch.arange(4)
    ema_b.update(index, torch.tensor([1.0, 4.0, 0.5, 0.25]))
    ema_d.update(index, torch.tensor([2.0, 2.0, 1.0, 4.0]))
    lb, ld = ema_b.normalized(index), ema_d.normalized(index)
    assert lb.tolist() == [0.25, 1.0, 1.0, 0.5] and ld.tolist() == [1.0, 1.0, 0.25, 1.0]
    w = relative_difficulty(lb, ld)
    expected = [0.25 / (1.25 + 1e-8), 1.0 / (2.0 + 1e-8), 1.0 / (1.25 + 1e-8), 0.5 / (1.5 + 1e-8)]
    assert w.tolist() == pytest.approx(expected)


def test_swapping_permutes_bias_features_only():
    torch.manual_seed(0)
    net = DisentNet(Encoder(MLP(12, 3)), Encoder(MLP(12, 3)), 3)
    x, perm = torch.randn(5, 12), torch.tensor([3, 0, 4, 1, 2])
    out = net(x, perm=perm, train=True)
    z_i, z_b = net.enc_i(x), net.enc_b(x)
    assert torch.allclose(out["swap_conflict"], net.head_i(torch.cat([z_i, z_b[perm]], 1)))
    assert torch.allclose(out["swap_align"], net.head_b(torch.cat([z_i, z_b[perm]], 1)))
    assert torch.allclose(out["conflict"], net.head_i(torch.cat([z_i, z_b], 1)))
    assert "swap_conflict" not in net(x, train=True)
    # stop-gradients: the intrinsic head's loss does not reach the bias encoder, and vice versa
    net.zero_grad()
    out["conflict"].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in net.enc_b.parameters())


def _tiny_data(n=40, classes=2, seed=0):
    from diffinject.data.parquet import ArraySplit

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images[..., 0] = (labels * 200)[:, None, None]  # a colour cue: the bias
    split = ArraySplit(images, labels, labels.copy(), np.array([f"s{i}" for i in range(n)], dtype=object))
    return TrainData(train=split, valid=split, test=split, num_classes=classes, num_biases=classes)


def _method(name, data, steps=12, **options):
    cfg = experiment_config("colored_digits", "1", quick=True)
    clf = cfg.classifier
    clf.num_steps, clf.batch_size, clf.eval_every, clf.log_every = steps, 8, 6, 3
    clf.checkpoint_every = 0  # a resume state at every evaluation
    opts = {**cfg.baselines.__dict__, "committee_steps": 6, **options}
    method = get_method(name)(clf, data.num_classes, (3, 4, 4), len(data.train), opts)
    return method, clf


def test_disent_swaps_only_after_the_curriculum_step_and_decays_lr_from_there():
    data = _tiny_data()
    method, clf = _method("disent", data, curr_step=4, lr_decay_step=2, lr_gamma=0.5, disent_lr=0.01)
    clf.log_every = 1
    method.prepare(data, TrainContext(), 0)
    logs = []
    fit(method, data, clf, TrainContext(log=lambda step, m: logs.append((step, m))), seed=0)
    swapping = {step: m["train_swapping"] for step, m in logs if "train_swapping" in m}
    lrs = {step: m["train_lr"] for step, m in logs if "train_lr" in m}
    # DisEnt's `step > curr_step` on 0-based steps: updates 1-5 without swapping, from update 6 with
    assert swapping == {step: float(step > 5) for step in range(1, 13)}
    # the lr of each update: the decay counts from update 5 (past curr_step), halving every 2
    assert lrs == {**dict.fromkeys(range(1, 7), 0.01), 7: 0.005, 8: 0.005, 9: 0.0025, 10: 0.0025, 11: 0.00125,
                   12: 0.00125}


@pytest.mark.parametrize("disent_lr,lr", [(0.0, 0.003), (0.02, 0.02)])
def test_disent_trains_at_its_own_lr_or_the_classifiers(disent_lr, lr):
    data = _tiny_data()
    cfg = experiment_config("colored_digits", "1", quick=True).classifier
    cfg.lr = 0.003
    method = get_method("disent")(cfg, 2, (3, 4, 4), len(data.train), {"disent_lr": disent_lr})
    assert method.optimizers["model"].param_groups[0]["lr"] == lr


def test_committee_vote_needs_agreement_above_tau():
    p = np.array([[0.995, 0.995, 0.999, 0.5],
                  [0.995, 0.999, 0.99, 0.999],
                  [0.995, 0.2, 0.991, 0.999],
                  [0.1, 0.1, 0.1, 0.999],
                  [0.1, 0.1, 0.1, 0.1]])
    assert committee_vote(p, tau=0.99, agreement=3).tolist() == [True, False, False, True]
    assert committee_vote(p, tau=0.99, agreement=2).tolist() == [True, True, True, True]


def test_be_bias_model_learns_only_from_pseudo_aligned_samples():
    data = _tiny_data()
    method, _ = _method("lff_be", data)
    method.pseudo_aligned = torch.tensor([i % 3 != 0 for i in range(len(data.train))])
    logits = torch.randn(6, 2, requires_grad=True)
    index, y = torch.arange(6), torch.tensor([0, 1, 0, 1, 0, 1])
    method.biased_loss(logits, y, index).sum().backward()
    masked = ~method.pseudo_aligned[index]
    assert not logits.grad[masked].any() and logits.grad[~masked].abs().sum() > 0


def test_be_detector_runs_the_committee_and_logs_precision_and_recall():
    data = _tiny_data(n=48)
    method, _ = _method("lff_be", data, num_bias_models=3, agreement=2, committee_steps=20)
    logs = []
    method.prepare(data, TrainContext(log=lambda step, m: logs.append(m)), seed=0)
    assert method.pseudo_aligned.shape == (48,) and method.pseudo_aligned.dtype == torch.bool
    assert set(logs[0]) == {"be_pseudo_aligned", "be_precision", "be_recall", "be_kept_step_mean"}


def test_committee_config_keeps_the_best_on_valid_evaluation_or_the_last_weights():
    clf = experiment_config("colored_digits", "1", quick=True).classifier
    options = {"committee_steps": 1_000, "committee_eval_every": 500}
    cfg, offset = committee_config(clf, {**options, "committee_select": "valid"})
    assert (cfg.num_steps, cfg.select, cfg.eval_every, offset) == (1_000, "valid", 500, 1)
    assert cfg == dataclasses.replace(clf, num_steps=1_000, select="valid", eval_every=500)
    cfg, offset = committee_config(clf, {**options, "committee_select": "last"})
    assert (cfg.num_steps, cfg.select, cfg.eval_every, offset) == (1_000, "last", 1_000, 0)


@pytest.mark.parametrize("select,kept", [("valid", {1, 9, 17}), ("last", {20})])
def test_each_committee_model_keeps_the_weights_its_selection_gives(select, kept):
    """committee_select=valid: each model's best-on-valid evaluation after steps 1, 1 + N, ...
    (BE's schedule); last: its last weights. The detector logs the mean kept step."""
    data = _tiny_data(n=48)
    method, clf = _method("lff_be", data, num_bias_models=3, agreement=2, committee_steps=20,
                          committee_eval_every=8, committee_select=select)
    logs = []
    method.prepare(data, TrainContext(log=lambda step, m: logs.append(m)), seed=0)
    cfg, offset = committee_config(clf, method.options)
    steps = [train_method("gce", cfg, data, TrainContext(), m, {"q": 0.7}, eval_offset=offset).metrics["selected_step"]
             for m in range(3)]  # the committee's seeds: seed * 100 + m
    assert set(steps) <= kept and logs[0]["be_kept_step_mean"] == pytest.approx(np.mean(steps))


@pytest.mark.parametrize("augment", ["crop_flip", "none"])
def test_true_label_probabilities_score_augmented_images_given_a_generator(augment):
    data = _tiny_data()
    clf = dataclasses.replace(experiment_config("colored_digits", "1", quick=True).classifier, augment=augment)
    torch.manual_seed(0)
    net = MLP(3 * 4 * 4, 2)
    prep = Preprocess(clf, torch.device("cpu"))

    def score(generator=None):
        return true_label_probabilities(net, data, prep, 16, generator)

    plain, augmented = score(), score(torch.Generator().manual_seed(5))
    assert np.array_equal(augmented, score(torch.Generator().manual_seed(5)))  # seeded: the same crops and flips
    if augment == "none":
        assert np.array_equal(plain, augmented)
    else:
        assert not np.allclose(plain, augmented)


@pytest.mark.parametrize("augment", [True, False])
def test_the_detector_scores_with_the_training_augmentation_when_asked(augment, monkeypatch):
    import diffinject.methods.bias_ensemble as be

    generators = []

    def recording(net, data, prep, batch_size, generator=None):
        generators.append(generator)
        return np.ones(len(data.train))

    monkeypatch.setattr(be, "true_label_probabilities", recording)
    data = _tiny_data()
    method, _ = _method("lff_be", data, num_bias_models=2, agreement=2, committee_steps=2, committee_augment=augment)
    method.prepare(data, TrainContext(), seed=0)
    assert len(generators) == 2 and all((g is not None) == augment for g in generators)


def test_lff_resume_reproduces_the_ema_state():
    data = _tiny_data()
    states = {}

    def run(resume=None):
        method, clf = _method("lff", data, steps=12)
        ctx = TrainContext(resume_state=resume, report=lambda m, s: states.setdefault(
            (resume is not None, m["step"]), _copy(s)))
        method.prepare(data, ctx, 0)
        fit(method, data, clf, ctx, seed=0)
        return method

    straight = run()
    resumed = run(resume=states[(False, 6)])
    for name in ("ema_b", "ema_d"):
        a, b = getattr(straight, name), getattr(resumed, name)
        assert torch.equal(a.values, b.values) and torch.equal(a.seen, b.seen)
    assert states[(False, 6)]["method"]["extra"]["ema_b"]["seen"].any()


def _copy(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def _ema_worker(rank, path, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    ema = SampleLossEMA(np.array([0, 1, 0, 1, 0]), 2, 0.7)
    mine = torch.tensor([0, 2, 4]) if rank == 0 else torch.tensor([1, 3])  # shards of unequal length
    ema.update(mine, mine.double() + 1.0)
    torch.save(ema.state_dict(), f"{out}.{rank}")
    dist.destroy_process_group()


def test_ema_state_is_identical_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "ema")
    mp.spawn(_ema_worker, args=(str(tmp_path / "store"), out), nprocs=2)
    a, b = torch.load(f"{out}.0", weights_only=True), torch.load(f"{out}.1", weights_only=True)
    assert torch.equal(a["values"], b["values"]) and a["values"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert a["seen"].all()


@pytest.mark.parametrize("name", ["lff_be", "disent_be"])
def test_be_mask_travels_with_the_checkpoint(name):
    data = _tiny_data()
    method, _ = _method(name, data)
    method.prepare(data, TrainContext(), 0)
    state = _copy(method.state_dict())
    again, _ = _method(name, data)
    again.prepare(data, TrainContext(resume_state={"step": 6}), 0)  # resumed: no committee
    assert again.pseudo_aligned is None
    again.load_state_dict(state)
    assert torch.equal(again.pseudo_aligned, method.pseudo_aligned)


def _fixed_emas(method, names_values, data):
    """Every sample seen, with the given loss EMAs; with ema_alpha 1 an update keeps them."""
    for name, values in names_values.items():
        ema = getattr(method, name)
        ema.values = torch.as_tensor(values, dtype=torch.float64).clone()
        ema.seen = torch.ones(len(data.train), dtype=torch.bool)


def _class_max_normalised(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return values / np.array([values[labels == labels[i]].max() for i in range(len(values))])


def test_lff_weighs_each_debiased_loss_term_by_its_relative_difficulty():
    """W = l_B / (l_B + l_D + 1e-8) on class-max normalised EMAs (LfF's train.py); a sample with
    l_B = 0 contributes neither loss nor gradient to the debiased model."""
    import copy

    data = _tiny_data()
    labels = data.train.labels
    method, _ = _method("lff", data, ema_alpha=1.0)
    method.prepare(data, TrainContext(), 0)
    rng = np.random.default_rng(1)
    ema_b = rng.uniform(0.5, 2.0, len(labels))
    ema_b[[0, 2]] = 0.0  # rows 0 and 2: weight 0
    ema_d = rng.uniform(0.5, 2.0, len(labels))
    _fixed_emas(method, {"ema_b": ema_b, "ema_d": ema_d}, data)
    lb, ld = _class_max_normalised(ema_b, labels), _class_max_normalised(ema_d, labels)
    weight = torch.as_tensor(lb / (lb + ld + 1e-8), dtype=torch.float32)
    assert weight[[0, 2]].eq(0).all() and weight[[1, 3]].gt(0.1).all()

    torch.manual_seed(0)
    x, index = torch.rand(4, 3, 4, 4), torch.arange(4)
    y = torch.as_tensor(labels[:4])
    debiased = copy.deepcopy(method.nets["model"])
    expected = (F.cross_entropy(debiased(x), y, reduction="none") * weight[:4]).mean()
    expected.backward()
    stats = method.update(x, y, index)
    assert stats["loss_d"] == pytest.approx(float(expected.detach()), rel=1e-6)
    assert stats["weight_mean"] == pytest.approx(float(weight[:4].mean()), rel=1e-6)
    for got, want in zip(method.nets["model"].parameters(), debiased.parameters()):
        assert torch.allclose(got.grad, want.grad, rtol=1e-5, atol=1e-8)

    zero_weight = torch.tensor([0, 2])
    stats = method.update(x[zero_weight], y[zero_weight], zero_weight)
    assert stats["loss_d"] == 0.0 and stats["loss_b"] > 0.0
    assert all(not p.grad.any() for p in method.nets["model"].parameters())
    assert any(p.grad.any() for p in method.nets["biased"].parameters())  # the biased model still learns


def test_disent_loss_of_one_swapping_update_by_hand(monkeypatch):
    """DisEnt's learner.py, one update after the curriculum step, with fixed EMAs and a fixed
    permutation: W CE(C_i(z), y) + lambda_dis_align GCE(C_b(z), y) + lambda_swap (W CE(C_i(z_swap), y)
    + lambda_swap_align GCE(C_b(z_swap), y[perm])), W = l_align / (l_align + l_conflict + 1e-8).
    The three lambdas differ, so one in the wrong place shows."""
    import copy

    data = _tiny_data()
    labels = data.train.labels
    q = 0.7
    method, _ = _method("disent", data, ema_alpha=1.0, curr_step=0, lambda_dis_align=2.0, lambda_swap_align=3.0,
                        lambda_swap=0.5, q=q)
    method.prepare(data, TrainContext(), 0)
    method.steps = 1  # past curr_step 0: this update swaps
    rng = np.random.default_rng(2)
    ema_align, ema_conflict = rng.uniform(0.5, 2.0, len(labels)), rng.uniform(0.5, 2.0, len(labels))
    _fixed_emas(method, {"ema_align": ema_align, "ema_conflict": ema_conflict}, data)
    la, lc = _class_max_normalised(ema_align, labels), _class_max_normalised(ema_conflict, labels)

    index = torch.tensor(np.concatenate([np.flatnonzero(labels == 0)[:2], np.flatnonzero(labels == 1)[:2]]))
    y = torch.as_tensor(labels[index.numpy()])
    perm = torch.tensor([2, 3, 0, 1])  # every sample gets the bias features of one of the other class
    assert (y[perm] != y).all()
    monkeypatch.setattr(torch, "randperm", lambda n, **kwargs: perm.clone())
    weight = torch.as_tensor(la / (la + lc + 1e-8), dtype=torch.float32)[index]
    torch.manual_seed(0)
    x = torch.rand(4, 3, 4, 4)

    net = copy.deepcopy(method.nets["model"])
    with torch.no_grad():
        z_i, z_b = net.enc_i(x), net.enc_b(x)

        def ce(logits, target):
            return F.cross_entropy(logits, target, reduction="none")

        def gce(logits, target):  # Zhang & Sabuncu's GCE as the reference computes it
            return ce(logits, target) * q * torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1) ** q

        conflict, align = net.head_i(torch.cat([z_i, z_b], 1)), net.head_b(torch.cat([z_i, z_b], 1))
        swap_conflict, swap_align = net.head_i(torch.cat([z_i, z_b[perm]], 1)), net.head_b(torch.cat([z_i, z_b[perm]], 1))
        expected = (ce(conflict, y) * weight).mean() + 2.0 * gce(align, y).mean() \
            + 0.5 * ((ce(swap_conflict, y) * weight).mean() + 3.0 * gce(swap_align, y[perm]).mean())

    stats = method.update(x, y, index)
    assert stats["swapping"] == 1.0
    assert stats["weight_mean"] == pytest.approx(float(weight.mean()), rel=1e-6)
    assert stats["loss"] == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("a2_loss", ["ce", "gce"])
def test_a2_trains_its_final_classifier_with_the_loss_its_protocol_names(a2_loss):
    """A²'s released 3.training-ours.py uses criterion_GCE (q 0.7) on original + augmented images:
    the reference baseline protocol; uniform trains it with cross-entropy like every stage 4."""
    from diffinject.nets.gce_loss import gce_loss

    data = _tiny_data()
    method, _ = _method("a2", data, a2_loss=a2_loss)
    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 4, 4), torch.as_tensor(data.train.labels[:6])
    logits = method.nets["model"](x)
    want = gce_loss(logits, y, 0.7).mean() if a2_loss == "gce" else F.cross_entropy(logits, y)
    other = F.cross_entropy(logits, y) if a2_loss == "gce" else gce_loss(logits, y, 0.7).mean()
    stats = method.update(x, y, torch.arange(6))
    assert stats["loss"] == pytest.approx(float(want), rel=1e-6)
    assert abs(stats["loss"] - float(other)) > 1e-3
    assert experiment_config("colored_mnist_5k", "1", baselines="reference").baselines.a2_loss == "gce"
    assert experiment_config("colored_mnist_5k", "1", baselines="uniform").baselines.a2_loss == "ce"


@pytest.mark.parametrize("name", [m for m in table_methods() if not get_method(m).needs_synthetic])
def test_every_method_trains_under_distributed_data_parallel(name, tmp_path):
    """A Ray Train worker (one per GPU training by default) wraps the networks in DDP, which stops
    at the first step on a parameter that gets no gradient (DisEnt's encoders once kept their
    unused last layers). A one-process gloo group is enough to catch that. (The methods on
    synthetic data train as Vanilla does.)"""
    import torch.distributed as dist

    data = _tiny_data()
    method, clf = _method(name, data, steps=4)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ctx = TrainContext()
        method.prepare(data, ctx, 0)
        fit(method, data, clf, ctx, seed=0)
        assert all(type(net).__name__ == "DistributedDataParallel" for net in method.nets.values())
    finally:
        dist.destroy_process_group()
