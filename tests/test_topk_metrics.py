import numpy as np
import pytest
import torch

from diffinject.core.errors import ConfigError
from diffinject.nets.metrics import accuracy_metrics, cell_counts
from diffinject.stages.stage1 import precision_at_k, select_topk


def test_global_topk_orders_by_loss_and_breaks_ties_by_id():
    losses = np.array([0.1, 5.0, 2.0, 5.0, 3.0])
    ids = np.array(["e", "d", "c", "b", "a"], dtype=object)
    labels = np.zeros(5, dtype=int)
    assert select_topk(losses, labels, ids, 3).tolist() == [3, 1, 4]  # tie 5.0: id 'b' before 'd'


def test_per_class_topk_takes_k_per_class():
    losses = np.array([1.0, 9.0, 3.0, 8.0, 2.0, 7.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    ids = np.array([str(i) for i in range(6)], dtype=object)
    assert select_topk(losses, labels, ids, 2, "per_class").tolist() == [1, 2, 3, 5]


@pytest.mark.parametrize("k,scope,message", [(0, "global", "positive"), (7, "global", "larger than the training set"),
                                             (4, "per_class", "larger than class"), (1, "rows", "global or per_class")])
def test_topk_rejects_bad_k(k, scope, message):
    with pytest.raises(ConfigError, match=message):
        select_topk(np.zeros(6), np.array([0, 0, 0, 1, 1, 1]), np.arange(6).astype(str), k, scope)


def test_precision_at_k():
    aligned = np.array([True, False, False, True])
    assert precision_at_k(np.array([1, 2, 3]), aligned) == pytest.approx(2 / 3)


def test_accuracy_metrics_from_cells():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    biases = torch.tensor([0, 0, 1, 1, 1, 0])
    predictions = torch.tensor([0, 0, 1, 1, 0, 0])
    m = accuracy_metrics(cell_counts(predictions, labels, biases, 2, 2))
    assert m["acc"] == pytest.approx(3 / 6)
    assert m["aligned_acc"] == pytest.approx(3 / 4)       # cells (0,0): 2/2, (1,1): 1/2
    assert m["conflicting_acc"] == pytest.approx(0 / 2)   # cells (0,1): 0/1, (1,0): 0/1
    assert m["cell_mean_acc"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
