import pytest
import torch

from medmamba.training.loss import DeepSupervisionDiceCE, deep_supervision_weights, downsample_target


def _one_hot_logits(target: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(target[:, 0], classes).movedim(-1, 1).float()
    return (onehot * 2 - 1) * scale


def test_weights_halve_drop_lowest_and_sum_to_one():
    weights = deep_supervision_weights(4)
    assert weights == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


def test_perfect_prediction_has_near_zero_loss():
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    loss = DeepSupervisionDiceCE()(_one_hot_logits(target, 3), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


def test_wrong_prediction_is_penalised():
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    wrong = _one_hot_logits((target + 1) % 3, 3)
    assert DeepSupervisionDiceCE()(wrong, target).item() > 1.0


def test_deep_supervision_is_the_weighted_sum_over_downsampled_targets():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    outputs = [torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)]
    loss_fn = DeepSupervisionDiceCE()
    expected = sum(
        w * loss_fn(o, downsample_target(target, o.shape[2:]))
        for w, o in zip(deep_supervision_weights(3), outputs)
    )
    assert loss_fn(outputs, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_target_downsampling_is_nearest_and_keeps_labels():
    target = torch.randint(0, 4, (1, 1, 8, 6, 4))
    small = downsample_target(target, (4, 3, 2))
    assert small.shape == (1, 1, 4, 3, 2) and small.dtype == target.dtype
    assert torch.equal(small, target[:, :, ::2, ::2, ::2])


def test_bf16_outputs_give_fp32_loss():
    target = torch.randint(0, 2, (1, 1, 4, 4, 4))
    loss = DeepSupervisionDiceCE()(torch.randn(1, 2, 4, 4, 4, dtype=torch.bfloat16), target)
    assert loss.dtype == torch.float32
