"""Training losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from components.losses import margin_mse_loss, pointwise_mse_loss, soft_target_cross_entropy


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_margin_mse_matches_hand_computed_value():
    # student margins (2-1, 0.5-1) = (1, -0.5); teacher margins (1-0, 2-0) = (1, 2)
    # errors (0, -2.5) -> squares (0, 6.25) -> mean 3.125
    loss = margin_mse_loss(t(2.0, 0.5), t(1.0, 1.0), t(1.0, 2.0), t(0.0, 0.0))
    assert loss.item() == pytest.approx(3.125)


def test_margin_mse_ignores_the_students_offset_but_not_its_margins():
    s_a, s_b, t_a, t_b = t(0.3, 1.2, -0.4), t(0.1, 0.9, 0.2), t(2.0, 1.0, 0.5), t(1.0, 1.5, 0.0)
    base = margin_mse_loss(s_a, s_b, t_a, t_b)
    assert margin_mse_loss(s_a + 7.0, s_b + 7.0, t_a, t_b).item() == pytest.approx(base.item())
    assert margin_mse_loss(s_a + 1.0, s_b, t_a, t_b).item() != pytest.approx(base.item())


def test_margin_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="four 1-D tensors"):
        margin_mse_loss(t(1.0, 2.0), t(1.0), t(1.0, 2.0), t(1.0, 2.0))
    with pytest.raises(ValueError, match="four 1-D tensors"):
        margin_mse_loss(*(torch.zeros(2, 1) for _ in range(4)))


def test_soft_target_cross_entropy_matches_hand_computed_value():
    # row 1: softmax(0, ln 3) = (1/4, 3/4) against (1/2, 1/2): -(ln(1/4) + ln(3/4)) / 2
    # row 2: softmax(0, 0) = (1/2, 1/2) against the one-hot (1, 0): ln 2
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    targets = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    row1 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    expected = (row1 + math.log(2.0)) / 2
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_cross_entropy_is_lowest_at_the_target_distribution():
    target = torch.tensor([[0.2, 0.5, 0.3]])
    at_target = soft_target_cross_entropy(torch.log(target), target)
    entropy = -(target * torch.log(target)).sum()
    assert at_target.item() == pytest.approx(entropy.item(), rel=1e-6)
    assert soft_target_cross_entropy(torch.zeros(1, 3), target).item() > at_target.item()


def test_soft_target_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        soft_target_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))


def test_pointwise_mse_matches_hand_computed_value():
    # errors (1, -2) -> squares (1, 4) -> mean 2.5
    assert pointwise_mse_loss(t(1.0, 2.0), t(0.0, 4.0)).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="1-D"):
        pointwise_mse_loss(torch.zeros(2, 1), torch.zeros(2, 1))
