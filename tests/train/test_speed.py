"""Tuned execution (ctcovid.train.speed): precision and layout rules, depth folding, the bf16 check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ctcovid.config import from_dict
from ctcovid.errors import ConfigError
from ctcovid.preprocess.pipeline import PreprocessConfig
from ctcovid.train import fold, speed
from ctcovid.train.config import TrainConfig

CPU = torch.device("cpu")
CUDA = torch.device("cuda")

# (in, out, depth, kernel depth, stride, padding, dilation, groups, bias, in-plane size)
CONV_CASES = [
    (3, 8, 4, 7, 1, 3, 1, 1, False, 9),  # a 7-deep stem on 4 slices
    (3, 8, 4, 7, 2, 3, 1, 1, True, 9),
    (8, 8, 2, 3, 1, 1, 1, 1, False, 7),  # the torch-bug shape of a ResNet stage
    (8, 16, 2, 3, 2, 1, 1, 2, False, 7),
    (4, 4, 3, 5, 1, 4, 2, 1, True, 5),
    (16, 16, 1, 3, 1, 1, 1, 1, False, 1),  # tiny planes, large weight: the input-unfold path
    (16, 16, 2, 3, 1, 1, 1, 4, False, 1),
]


def _conv(case: tuple[int, ...]) -> tuple[nn.Conv3d, torch.Tensor]:
    c, o, depth, k, s, p, dil, groups, bias, hw = case
    torch.manual_seed(0)
    conv = nn.Conv3d(c, o, (k, 3, 3), stride=(s, 1, 2), padding=(p, 1, 1), dilation=(dil, 1, 1),
                     groups=groups, bias=bool(bias))  # fmt: skip
    return conv.double(), torch.randn(2, c, depth, hw, hw, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("case", CONV_CASES)
def test_fold_depth_conv3d_equals_conv3d_with_its_gradients(case: tuple[int, ...]) -> None:
    conv, x = _conv(case)
    y = conv(x)
    grad = torch.randn_like(y)
    want = torch.autograd.grad(y, (x, conv.weight), grad)
    y2 = fold.fold_depth_conv3d(
        x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )  # type: ignore[arg-type]
    got = torch.autograd.grad(y2, (x, conv.weight), grad)
    assert y2.shape == y.shape
    torch.testing.assert_close(y2, y)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def _small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm3d(8),
        nn.Conv3d(8, 8, 1, bias=False),  # 1-deep kernel: left alone
        nn.Conv3d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.Conv3d(8, 8, 3, padding=1, bias=False),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_fold_thin_convs_keeps_parameters_state_dict_and_identity() -> None:
    net = _small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = [id(p) for p in net.parameters()]
    names = fold.fold_thin_convs(net)
    assert names == ["0", "3", "4"]
    assert all(isinstance(m, fold.DepthFoldedConv3d) for m in (net[0], net[3], net[4]))
    assert type(net[2]) is nn.Conv3d
    assert [id(p) for p in net.parameters()] == params
    assert list(net.state_dict()) == list(before)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_folded_model_gives_the_fp32_result_and_its_gradients() -> None:
    net = _small_net().eval()
    folded = copy.deepcopy(net)
    fold.fold_thin_convs(folded)
    x = torch.randn(2, 1, 4, 6, 6)
    torch.testing.assert_close(folded(x), net(x))  # net[4] sees 2 slices: folded in fp32 too
    grads = [torch.autograd.grad(m(x).square().sum(), m[4].weight)[0] for m in (folded, net)]
    torch.testing.assert_close(grads[0], grads[1])
    thick = torch.randn(2, 1, 8, 6, 6)  # nothing thinner than a kernel: the usual conv3d, bit for bit
    assert torch.equal(folded(thick), net(thick))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = folded(x).float(), net(x).float()
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_conv3d_inputs_reports_shapes_and_leaves_the_model_as_it_was() -> None:
    net = _small_net().train()
    stats = net[1].running_mean.clone()
    shapes = speed.conv3d_inputs(net, (6, 1, 4, 8, 8))
    assert shapes == {"0": (6, 1, 4, 8, 8), "2": (6, 8, 4, 8, 8), "3": (6, 8, 4, 8, 8), "4": (6, 8, 2, 4, 4)}
    assert net.training and torch.equal(net[1].running_mean, stats)


def test_bf16_check_passes_folded_convolutions() -> None:
    net = _small_net()
    fold.fold_thin_convs(net)
    assert speed.bf16_conv_mismatches(net, (2, 1, 4, 8, 8)) == {}


class _Broken(nn.Conv3d):
    """A convolution whose bf16 result is wrong, as torch's is for some shapes."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        out = super()._conv_forward(input, weight, bias)
        return out * 3 if torch.is_autocast_enabled("cpu") else out


def test_bf16_check_names_a_wrong_convolution() -> None:
    net = nn.Sequential(_Broken(1, 4, 3, padding=1), nn.Flatten())
    bad = speed.bf16_conv_mismatches(net, (1, 1, 4, 4, 4))
    assert list(bad) == ["0"] and bad["0"] > speed.BF16_TOLERANCE
    assert speed.bf16_conv_mismatches(net, (1, 1, 4, 4, 4), thin_only=True) == {}  # 4 slices >= kernel 3


def test_auto_precision_is_bf16_only_on_cuda_and_cpu_bf16_is_opt_in(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.resolve_precision("auto", CPU) is None  # not a CPU default until its accuracy is checked
    with caplog.at_level("WARNING", logger="ctcovid.train.speed"):
        assert speed.resolve_precision("bf16", CPU) == torch.bfloat16
    assert not caplog.records
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    assert speed.resolve_precision("auto", CPU) is None
    with caplog.at_level("WARNING", logger="ctcovid.train.speed"):
        assert speed.resolve_precision("bf16", CPU) == torch.bfloat16  # asked for: given, with a warning
    assert "emulates" in caplog.text
    assert speed.resolve_precision("fp32", CPU) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert speed.resolve_precision("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert speed.resolve_precision("auto", CUDA) is None
    with pytest.raises(ConfigError, match="'bf17'"):
        speed.resolve_precision("bf17", CPU)


@pytest.mark.parametrize(
    ("device", "dtype", "in_channels", "depth", "crash"),
    [
        (CPU, torch.bfloat16, 3, 4, True),
        (CPU, torch.bfloat16, 6, 4, True),
        (CPU, torch.bfloat16, 3, 2, True),
        (CPU, torch.bfloat16, 1, 4, False),
        (CPU, torch.bfloat16, 3, 8, False),
        (CPU, None, 3, 4, False),
        (CUDA, torch.bfloat16, 3, 4, False),
        (CPU, torch.bfloat16, 3, None, False),
    ],
)
def test_channels_last_crash_guard(
    device: torch.device, dtype: torch.dtype | None, in_channels: int, depth: int | None, crash: bool
) -> None:
    assert speed.channels_last_crash_case(device, dtype, in_channels, depth) is crash
    assert speed.resolve_channels_last(True, device, dtype, in_channels, depth) is (not crash)


def test_auto_channels_last_is_on_for_bf16_only() -> None:
    assert speed.resolve_channels_last("auto", CPU, torch.bfloat16, 1, 40) is True
    assert speed.resolve_channels_last("auto", CPU, None, 1, 40) is False
    assert speed.resolve_channels_last("auto", CUDA, torch.bfloat16, 1, 40) is True  # measured on an H200
    assert speed.resolve_channels_last("auto", CUDA, torch.bfloat16, 3, 4) is True  # the crash is CPU-only
    assert speed.resolve_channels_last("auto", CUDA, None, 1, 40) is False
    assert speed.resolve_channels_last(False, CPU, torch.bfloat16, 1, 40) is False
    with pytest.raises(ConfigError, match="train.channels_last"):
        speed.resolve_channels_last("yes", CPU, None, 1, 40)


def test_train_config_takes_auto_and_rejects_other_words() -> None:
    cfg = TrainConfig()
    assert (cfg.precision, cfg.channels_last, cfg.compile) == ("auto", "auto", False)
    assert from_dict(TrainConfig, {"channels_last": True}, "train").channels_last is True
    with pytest.raises(ConfigError, match="train.channels_last"):
        from_dict(TrainConfig, {"channels_last": "yes"}, "train")
    with pytest.raises(ConfigError, match="train.precision"):
        from_dict(TrainConfig, {"precision": "bf17"}, "train")


def test_input_shape_follows_the_depth_mode() -> None:
    assert speed.input_shape(PreprocessConfig(depth=40, size_hw=(128, 128)), 2) == (2, 1, 40, 128, 128)
    stack = PreprocessConfig(in_channels=3, depth_mode="stack", chunk_depth=4, size_hw=(64, 64))
    assert speed.input_shape(stack, 8) == (8, 3, 4, 64, 64)
    assert speed.input_shape(PreprocessConfig(depth_mode="keep"), 1) is None


def test_plan_folds_checks_and_uses_bf16_with_fused_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    net = _small_net()
    plan = speed.plan_execution(
        net, CPU, precision="bf16", channels_last="auto", compile=False, shape=(2, 1, 4, 8, 8)
    )
    assert plan.autocast_dtype == torch.bfloat16 and plan.channels_last and plan.fused_optimizer
    assert plan.folded == ["0", "3", "4"]
    assert "bf16 checked against fp32 on the thin 3D convolutions" in plan.notes


def test_plan_refuses_bf16_when_the_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(speed, "bf16_conv_mismatches", lambda *a, **k: {"layer4.0.conv2": 3.0})
    plan = speed.plan_execution(_small_net(), CPU, precision="auto", channels_last="auto", compile=False,
                                shape=(2, 1, 4, 8, 8))  # fmt: skip
    assert plan.autocast_dtype is None and not plan.channels_last  # auto never takes bf16 on a CPU
    with pytest.raises(speed.Bf16Unsupported, match="layer4.0.conv2.*precision='auto' or 'fp32'"):
        speed.plan_execution(_small_net(), CPU, precision="bf16", channels_last=False, compile=False,
                             shape=(2, 1, 4, 8, 8))  # fmt: skip


def test_plan_on_a_cpu_without_bf16_stays_fp32_and_folds_thin_convs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    net = _small_net()
    plan = speed.plan_execution(
        net, CPU, precision="auto", channels_last="auto", compile=False, shape=(2, 1, 4, 8, 8)
    )
    assert plan.autocast_dtype is None and not plan.channels_last and plan.fused_optimizer
    assert plan.folded == ["0", "3", "4"] and isinstance(net[4], fold.DepthFoldedConv3d)
    assert any("1 of 4 3D convolutions" in n for n in plan.notes)  # net[4] sees 2 slices
