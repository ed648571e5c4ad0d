"""Resuming a training from its checkpoint: where the state's tensors land, and that a resumed
step is the uninterrupted run's step (LfF, DisEnt and their BiasEnsemble variants keep per-sample
state on the CPU whatever device they train on)."""
import json

import numpy as np
import pytest
import torch
from ray.train import Checkpoint
from test_baselines import _copy, _method, _tiny_data

from diffinject.cluster.train_jobs import STATE_FILE, read_resume_state
from diffinject.methods.sample_ema import SampleLossEMA
from diffinject.training.loop import TrainContext, fit


def _tensors(tree):
    """Every tensor in a nested state (dicts, lists, tuples)."""
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def _fit(name, data, steps, resume=None, **options):
    """`name` fitted for `steps` steps (evaluations and resume states at 6 and the last), from
    `resume` if given: the resume states it reported, by step (copies: a report's state is live)."""
    method, clf = _method(name, data, steps=steps, **options)
    states = {}
    ctx = TrainContext(resume_state=resume, report=lambda metrics, state: states.setdefault(metrics["step"], _copy(state)))
    method.prepare(data, ctx, 0)
    fit(method, data, clf, ctx, seed=0)
    return states


def _save(state, folder):
    folder.mkdir(parents=True)
    torch.save(state, folder / STATE_FILE)
    return Checkpoint.from_directory(str(folder))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_the_resume_loader_puts_the_whole_state_on_the_cpu(tmp_path):
    """DisEnt-BE's: networks, optimiser, best_nets, the loss EMAs and the committee's mask."""
    reported = _fit("disent_be", _tiny_data(), steps=6, num_bias_models=2, committee_steps=2)[6]
    state, step = read_resume_state(_save(reported, tmp_path / "step6"))
    assert step == 6 and _same(state, reported)
    assert {tensor.device for tensor in _tensors(state)} == {torch.device("cpu")}
    assert {"ema_conflict", "ema_align", "pseudo_aligned"} <= set(state["method"]["extra"])


def test_the_resume_loader_finds_no_state_without_a_checkpoint_or_in_an_error_report(tmp_path):
    (tmp_path / "error.json").write_text(json.dumps({"type": "TrainingError", "message": "non-finite loss"}))
    assert read_resume_state(None) == (None, -1)
    assert read_resume_state(Checkpoint.from_directory(str(tmp_path))) == (None, -1)


def test_a_sample_ema_loads_a_state_onto_its_own_device():
    """The meta device stands in for a GPU that a state was loaded onto, or an EMA kept on."""
    ema = SampleLossEMA(np.array([0, 1, 0]), 2, 0.7)
    ema.update(torch.tensor([0, 2]), torch.tensor([1.0, 2.0]))
    state = ema.state_dict()
    elsewhere = SampleLossEMA(np.array([0, 1, 0]), 2, 0.7)
    elsewhere.values, elsewhere.seen = elsewhere.values.to("meta"), elsewhere.seen.to("meta")
    elsewhere.load_state_dict(state)
    assert (elsewhere.values.device, elsewhere.seen.device) == (torch.device("meta"),) * 2
    assert (elsewhere.values.dtype, elsewhere.seen.dtype) == (torch.float64, torch.bool)
    here = SampleLossEMA(np.array([0, 1, 0]), 2, 0.7)
    here.load_state_dict(state)
    assert torch.equal(here.values, ema.values) and torch.equal(here.seen, ema.seen)
    here.update(torch.tensor([0]), torch.tensor([4.0]))  # its own tensors, not the state's
    assert state["values"][0] == 1.0


@pytest.mark.parametrize("name", ["lff", "disent"])
def test_a_step_resumed_through_the_loader_is_the_uninterrupted_runs_step(name, tmp_path):
    data = _tiny_data()
    straight = _fit(name, data, steps=7)
    resume_state, step = read_resume_state(_save(straight[6], tmp_path / "step6"))
    resumed = _fit(name, data, steps=7, resume=resume_state)
    assert step == 6 and list(resumed) == [7]
    assert _same(resumed[7], straight[7])
