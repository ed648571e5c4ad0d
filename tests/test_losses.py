import pytest
import torch
import torch.nn.functional as F

from diffinject.nets.gce_loss import gce_loss


def test_gce_matches_reference_formula():
    torch.manual_seed(0)
    logits = torch.randn(16, 5)
    targets = torch.randint(0, 5, (16,))
    q = 0.7
    p_y = torch.softmax(logits, 1)[torch.arange(16), targets]
    expected = F.cross_entropy(logits, targets, reduction="none") * q * p_y ** q
    assert torch.allclose(gce_loss(logits, targets, q), expected, atol=1e-6)


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_gradient_is_q_p_pow_q_times_ce_gradient(q):
    torch.manual_seed(1)
    logits = torch.randn(8, 4, requires_grad=True)
    targets = torch.randint(0, 4, (8,))
    (grad_gce,) = torch.autograd.grad(gce_loss(logits, targets, q).sum(), logits)

    per_sample = []
    for i in range(8):
        (g,) = torch.autograd.grad(F.cross_entropy(logits[i:i + 1], targets[i:i + 1]), logits)
        p_y = torch.softmax(logits[i].detach(), 0)[targets[i]]
        per_sample.append(q * p_y ** q * g)
    assert torch.allclose(grad_gce, torch.stack(per_sample).sum(0), atol=1e-6)
    # and it is q times the gradient of the paper's (1 - p_y^q) / q
    p = torch.softmax(logits, 1)[torch.arange(8), targets]
    (grad_paper,) = torch.autograd.grad(((1 - p ** q) / q).sum(), logits)
    assert torch.allclose(grad_gce, q * grad_paper, atol=1e-6)


def test_gce_upweights_confident_samples():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    targets = torch.tensor([0, 0])  # first is easy, second hard
    weight = gce_loss(logits, targets) / F.cross_entropy(logits, targets, reduction="none")
    assert weight[0] > 10 * weight[1]


def test_gce_rejects_bad_q():
    with pytest.raises(ValueError, match="q must be in"):
        gce_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), q=0.0)
