"""The training loop without Ray: learning, exact resume, selection, NaN handling, batching."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffinject.config.schema import ClassifierConfig
from diffinject.core.errors import TrainingError
from diffinject.core.vocabulary import SELECTIONS
from diffinject.data.parquet import ArraySplit
from diffinject.methods import get_method
from diffinject.methods.vanilla import Vanilla
from diffinject.training.loop import (Preprocess, TrainContext, TrainData, batch_indices, fit, random_crop_flip,
                                      seed_everything)


def easy_split(n: int, seed: int) -> ArraySplit:
    """Class = which image quadrant is bright; bias = a random colour channel flag."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 40, (n, 8, 8, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 4 * r:4 * r + 4, 4 * q:4 * q + 4] = 220
    biases = rng.integers(0, 4, n)
    return ArraySplit(images=images, labels=labels, biases=biases, ids=np.array([str(i) for i in range(n)], dtype=object))


@pytest.fixture
def data():
    return TrainData(train=easy_split(256, 0), valid=easy_split(64, 1), test=easy_split(64, 2), num_classes=4, num_biases=4)


def cfg(**kw):
    base = dict(arch="mlp", num_steps=30, batch_size=32, lr=1e-3, eval_every=10, log_every=5)
    base.update(kw)
    return ClassifierConfig(**base)


def make(c, data, seed=0):
    seed_everything(seed)
    return get_method("vanilla")(c, 4, (3, 8, 8), len(data.train))


def test_fit_learns_an_easy_task(data):
    c = cfg(num_steps=150)
    result = fit(make(c, data), data, c, TrainContext(), seed=0)
    assert result.step == 150
    assert result.metrics["test_acc"] > 0.9


def test_resume_from_a_checkpoint_continues_exactly(data):
    c = cfg(augment="crop_flip")
    straight = fit(make(c, data), data, c, TrainContext(), seed=3)

    states = {}
    fit(make(c, data), data, cfg(augment="crop_flip", num_steps=20), TrainContext(
        report=lambda metrics, state: states.__setitem__(metrics["step"], copy.deepcopy(state))), seed=3)
    resumed = fit(make(c, data, seed=99), data, c, TrainContext(resume_state=states[20]), seed=3)

    assert resumed.step == 30
    for name, tensor in straight.method.nets["model"].state_dict().items():
        assert torch.equal(tensor, resumed.method.nets["model"].state_dict()[name]), name


def test_checkpoint_every_saves_the_resume_state_at_its_multiples_and_the_end_and_resumes_exactly(data):
    """Every evaluation is reported; the resume state only at multiples of checkpoint_every and
    the last step, and resuming from one continues as the straight run."""
    c = cfg(num_steps=50, checkpoint_every=20)
    reports = {}
    straight = fit(make(c, data), data, c, TrainContext(
        report=lambda metrics, state: reports.__setitem__(metrics["step"], copy.deepcopy(state))), seed=3)
    assert sorted(reports) == [10, 20, 30, 40, 50]
    assert [step for step, state in sorted(reports.items()) if state is not None] == [20, 40, 50]
    resumed = fit(make(c, data, seed=99), data, c, TrainContext(resume_state=reports[40]), seed=3)
    assert (straight.metrics.pop("steps_run"), resumed.metrics.pop("steps_run")) == (50, 10)
    assert resumed.metrics == straight.metrics
    for name, tensor in straight.method.nets["model"].state_dict().items():
        assert torch.equal(tensor, resumed.method.nets["model"].state_dict()[name]), name


def test_model_selection_keeps_the_best_valid_weights(data):
    c = cfg(num_steps=60, eval_every=5, lr=3e-3)
    reported = []
    result = fit(make(c, data), data, c, TrainContext(report=lambda m, s: reported.append(m)), seed=0)
    best = max(m["valid_acc"] for m in reported)
    assert result.metrics["valid_acc"] == pytest.approx(best)
    assert result.metrics["selected_score"] == pytest.approx(best)
    first_best = next(m for m in reported if m["valid_acc"] == best)  # ties keep the earliest
    assert result.metrics["selected_step"] == first_best["step"]
    assert result.metrics["test_acc"] == pytest.approx(first_best["test_acc"])


def test_a_resumed_fit_remembers_the_step_it_selected(data):
    c = cfg(num_steps=60, eval_every=5, lr=3e-3)
    straight = fit(make(c, data), data, c, TrainContext(), seed=0)
    states = {}
    fit(make(c, data), data, cfg(num_steps=30, eval_every=5, lr=3e-3), TrainContext(
        report=lambda metrics, state: states.__setitem__(metrics["step"], copy.deepcopy(state))), seed=0)
    resumed = fit(make(c, data, seed=99), data, c, TrainContext(resume_state=states[30]), seed=0)
    assert resumed.metrics["selected_step"] == straight.metrics["selected_step"]
    assert (straight.metrics["steps_run"], resumed.metrics["steps_run"]) == (60, 30)


def test_a_fit_resumed_from_its_final_checkpoint_keeps_every_selection(data):
    c = cfg()
    states = {}
    straight = fit(make(c, data), data, c, TrainContext(
        report=lambda metrics, state: states.__setitem__(metrics["step"], copy.deepcopy(state))), seed=0)
    resumed = fit(make(c, data, seed=99), data, c, TrainContext(resume_state=states[30]), seed=0)
    assert {k: resumed.metrics.get(k) for k in SELECTIONS.values()} == \
        {k: straight.metrics[k] for k in SELECTIONS.values()}


def test_last_selection_keeps_the_final_weights(data):
    c = cfg(select="last")
    reported = []
    result = fit(make(c, data), data, c, TrainContext(report=lambda m, s: reported.append(m)), seed=0)
    assert result.metrics["test_acc"] == pytest.approx(reported[-1]["test_acc"])


def test_last_selection_with_an_eval_offset_keeps_the_final_weights(data):
    """With eval_offset the last step is not evaluated: select=last still takes its weights."""
    c = cfg(num_steps=25, select="last")
    offset = fit(make(c, data), data, c, TrainContext(), seed=0, eval_offset=1)
    plain = fit(make(c, data), data, c, TrainContext(), seed=0)
    assert offset.metrics["selected_step"] == plain.metrics["selected_step"] == 25
    for name, tensor in plain.method.nets["model"].state_dict().items():
        assert torch.equal(tensor, offset.method.nets["model"].state_dict()[name]), name
    assert offset.metrics["test_acc"] == plain.metrics["test_acc"]


def _evaluation_steps(c, data, eval_offset):
    logged = []
    result = fit(make(c, data), data, c, TrainContext(log=lambda step, m: logged.append((step, m))), seed=0,
                 eval_offset=eval_offset)
    return [step for step, m in logged if "valid_acc" in m], result


def test_an_eval_offset_evaluates_after_steps_1_1_plus_n_and_not_at_the_end(data):
    c = cfg(num_steps=25, eval_every=10)
    steps, result = _evaluation_steps(c, data, eval_offset=1)
    assert steps == [1, 11, 21] and result.step == 25 and result.metrics["selected_step"] in steps
    assert _evaluation_steps(c, data, eval_offset=0)[0] == [10, 20, 25]


def mislabelled_split(n: int, seed: int) -> ArraySplit:
    """easy_split whose first quarter is bias-conflicting by its label alone: each image shows the
    class its bias names, its label is the next class. Learning the task makes the conflicting
    accuracy fall while the whole split's rises, so the two pick different evaluations."""
    s = easy_split(n, seed)
    labels = s.labels.copy()
    labels[: n // 4] = (labels[: n // 4] + 1) % 4
    return ArraySplit(images=s.images, labels=labels, biases=s.labels.copy(), ids=s.ids)


@pytest.fixture
def conflicting_data():
    """A benchmark that reports its test split's bias-conflicting accuracy (as BFFHQ)."""
    return TrainData(train=easy_split(256, 0), valid=easy_split(64, 1), test=mislabelled_split(64, 2), num_classes=4,
                     num_biases=4, reported="conflicting_acc")


def _fit_logging_evaluations(c, data):
    evaluations = []
    result = fit(make(c, data), data, c, TrainContext(log=lambda step, m: "test_acc" in m and evaluations.append(m)),
                 seed=0)
    return result.metrics, evaluations


def test_final_metrics_carry_the_reported_accuracy_under_every_selection(conflicting_data):
    data = conflicting_data
    metrics, evaluations = _fit_logging_evaluations(cfg(eval_every=5), data)
    best = max(evaluations, key=lambda m: m["test_conflicting_acc"])  # the earliest of equals
    assert metrics["reported_acc_best_test"] == best["test_conflicting_acc"]
    assert metrics["best_test_step"] == best["step"]
    assert evaluations[-1]["step"] == 30 and metrics["reported_acc_last"] == evaluations[-1]["test_conflicting_acc"]
    assert metrics["reported_acc"] == metrics["test_conflicting_acc"] != metrics["test_acc"]
    selected = max(evaluations, key=lambda m: m["valid_acc"])
    assert metrics["selected_step"] == selected["step"] != best["step"]  # selected on valid, not on test
    assert metrics["reported_acc"] == selected["test_conflicting_acc"] != metrics["reported_acc_best_test"]
    share = 1.0 - data.valid.aligned.mean()
    assert metrics["valid_conflict_share"] == pytest.approx(share)
    assert share != 1.0 - data.test.aligned.mean() and share != 1.0 - data.train.aligned.mean()


def test_test_selection_selects_by_the_reported_accuracy(conflicting_data):
    by_conflicting, evaluations = _fit_logging_evaluations(cfg(eval_every=5, select="test"), conflicting_data)
    best = max(evaluations, key=lambda m: m["test_conflicting_acc"])
    assert by_conflicting["selected_step"] == best["step"] and by_conflicting["selected_score"] == best["test_conflicting_acc"]
    whole = dataclasses.replace(conflicting_data, reported="acc")  # the default
    by_acc, evaluations = _fit_logging_evaluations(cfg(eval_every=5, select="test"), whole)
    best_whole = max(evaluations, key=lambda m: m["test_acc"])
    assert by_acc["selected_step"] == best_whole["step"] != best["step"]
    assert by_acc["reported_acc"] == by_acc["test_acc"] == best_whole["test_acc"]
    assert [m["test_acc"] for m in evaluations].count(best_whole["test_acc"]) > 1
    assert by_acc["best_test_step"] == best_whole["step"]  # of equal best test accuracies, the earliest


class ExplodingVanilla(Vanilla):
    name = "exploding_test_only"

    def update(self, x, y, index):
        self.calls = getattr(self, "calls", 0) + 1
        scale = float("nan") if self.calls >= 4 else 1.0
        loss = F.cross_entropy(self.nets["model"](x), y) * scale
        return {"loss": self.optimize(self.optimizers["model"], loss)}


def test_nan_loss_stops_with_step_and_last_checkpoint(data):
    c = cfg()
    method = ExplodingVanilla(c, 4, (3, 8, 8), len(data.train))
    before = {k: v.clone() for k, v in method.nets["model"].state_dict().items()}
    with pytest.raises(TrainingError, match=r"non-finite loss nan at step 4; last good checkpoint: /ckpt/step3"):
        fit(method, data, c, TrainContext(last_checkpoint=lambda: "/ckpt/step3"), seed=0)
    # the NaN step was not applied
    assert all(torch.isfinite(v).all() for v in method.nets["model"].state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in method.nets["model"].state_dict().items())


def test_batch_indices_shard_the_global_batch_and_cover_each_epoch():
    n, batch = 50, 16
    steps_per_epoch = 4
    seen = []
    for step in range(steps_per_epoch):
        single = batch_indices(n, batch, seed=7, step=step, rank=0, world_size=1)
        shards = [batch_indices(n, batch, seed=7, step=step, rank=r, world_size=3) for r in range(3)]
        assert sorted(np.concatenate(shards).tolist()) == sorted(single.tolist())
        seen.extend(single.tolist())
    assert sorted(seen) == list(range(n))
    assert not np.array_equal(batch_indices(n, batch, 7, 0, 0, 1), batch_indices(n, batch, 7, 4, 0, 1))


def test_random_crop_flip_matches_pad_slice_and_flip():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=2, generator=gen)
    gen = torch.Generator().manual_seed(0)
    offsets = torch.randint(0, 5, (2, 2), generator=gen)
    flips = torch.rand(2, generator=gen) < 0.5
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        dy, dx = offsets[i].tolist()
        crop = padded[i, :, dy:dy + 5, dx:dx + 5]
        expected = crop.flip(-1) if flips[i] else crop
        assert torch.equal(out[i], expected)


def test_preprocess_normalises_and_resizes():
    images = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    prep = Preprocess(ClassifierConfig(normalize=True, resize=8), torch.device("cpu"))
    x = prep(images, train=False)
    assert x.shape == (2, 3, 8, 8)
    expected = (1.0 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.2023, 0.1994, 0.2010])
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)
    assert prep.output_shape((4, 4, 3)) == (3, 8, 8)


def test_mlp_divide_by_255_flag():
    from diffinject.nets.classifiers import MLP

    torch.manual_seed(0)
    plain, scaled = MLP(12, 3), MLP(12, 3, divide_by_255=True)
    scaled.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 2, 2)
    assert torch.allclose(scaled(x * 255.0), plain(x), atol=1e-5)
    assert sum(p.numel() for p in plain.parameters()) == 12 * 100 + 100 + 100 * 100 + 100 + 100 * 16 + 16 + 16 * 3 + 3
