"""Training losses, each a small documented unit with its preconditions checked."""

from __future__ import annotations

import torch


def soft_target_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of grade logits against a target distribution (soft labels), batch mean.

    loss = -sum_k p_k log softmax(z)_k. With one-hot targets it is ordinary cross-entropy; with the
    raters' distribution it keeps their disagreement (the teacher's soft-target objective).
    """
    if logits.shape != target_probs.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target_probs.shape)} differ")
    return -(target_probs * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def margin_mse_loss(student_a: torch.Tensor, student_b: torch.Tensor, teacher_a: torch.Tensor,
                    teacher_b: torch.Tensor) -> torch.Tensor:
    """Margin MSE: mean of ((s_a - s_b) - (t_a - t_b))^2 over same-query product pairs (a, b).

    Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
    Distillation" (2020); used for the student in arXiv 2505.07105. Only score differences are
    learned, so the student's absolute offset is free (kdrank calibrates it afterwards).
    """
    shapes = {tuple(t.shape) for t in (student_a, student_b, teacher_a, teacher_b)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"margin_mse_loss needs four 1-D tensors of one length, got shapes {sorted(shapes)}")
    return (((student_a - student_b) - (teacher_a - teacher_b)) ** 2).mean()


def pointwise_mse_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pointwise MSE: mean of (s - t)^2, the student's score regressed onto the target grade directly.

    The comparison baseline for margin MSE: it also fixes the student's offset, so it spends capacity
    on absolute calibration that ranking does not need.
    """
    if student.shape != target.shape or student.dim() != 1:
        raise ValueError(f"pointwise_mse_loss needs two 1-D tensors of one length, got shapes "
                         f"{tuple(student.shape)} and {tuple(target.shape)}")
    return ((student - target) ** 2).mean()
