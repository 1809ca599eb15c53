"""The run configuration: one TOML file with ``[data]``, ``[preprocess]``, ``[model]``, ``[train]``
and ``[reliability]`` (what is fitted after training for calibrated, referable answers).

Everything is validated before any work starts; an unknown key, a wrong type, an unknown model or a
missing manifest fails with a message that names the key and the valid options. See
``configs/*.toml`` for the papers' recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctcovid.config import apply_overrides, from_dict, load_toml, to_dict
from ctcovid.errors import ConfigError
from ctcovid.preprocess.pipeline import PreprocessConfig
from ctcovid.types import DIAGNOSIS_LABELS, SEVERITY_LABELS

TASK_LABELS = {"diagnosis": DIAGNOSIS_LABELS, "severity": SEVERITY_LABELS}
METRICS = ("val_auroc", "val_accuracy", "val_f1_macro", "val_loss")


@dataclass(frozen=True)
class DataConfig:
    manifest: str = ""  # manifest CSV (ctcovid import); relative paths are relative to the config file
    split: str = ""  # split CSV; default <manifest>.split.csv, made with val/test/split_seed if missing
    val: float = 0.2
    test: float = 0.2
    split_seed: int = 0
    task: Literal["diagnosis", "severity", "custom"] = "diagnosis"
    labels: tuple[str, ...] = ()  # class names in output order; default from task
    cache_dir: str = ""  # default: <manifest folder>/.ctcovid_cache
    workers: int = 0  # preprocessing processes (0: one per CPU core)
    loader_workers: int = 0  # DataLoader worker processes

    def label_names(self) -> tuple[str, ...]:
        if self.labels:
            return self.labels
        if self.task == "custom":
            raise ConfigError("data.labels must list the class names when data.task = 'custom'")
        return TASK_LABELS[self.task]


@dataclass(frozen=True)
class ModelConfig:
    name: str = "r3d_18"
    dropout: float | None = None  # None: the builder's default (on for CT-S)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra builder arguments
    pretrained: str = ""  # a MONAI / MedicalNet / Hara state dict file to start from


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    # "step": lr x gamma every step_size epochs (the diagnosis paper: 10, 0.1); "cosine": lr falls
    # from lr to 0 along a half cosine over the epochs (no step_size/gamma), which converges in
    # fewer epochs on short runs such as the demo.
    scheduler: Literal["step", "cosine"] = "step"
    step_size: int = 10
    gamma: float = 0.1
    sampler: Literal["shuffle", "class_uniform"] = "shuffle"
    loss: Literal["ce", "weighted_ce"] = "ce"
    augment: bool = True
    # auto: bf16 on CUDA with bf16, fp32 elsewhere; bf16 on a CPU is checked against fp32 (train/speed.py)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # auto: on for bf16 on CPU (measured), off elsewhere
    compile: bool = False  # torch.compile the model (slower to start; no gain measured on CPU)
    grad_accum: int = 1
    clip_grad_norm: float = 0.0
    deterministic: bool = False
    seed: int = 0
    best_metric: str = "val_auroc"
    precise_bn_batches: int = 20  # re-estimate BatchNorm statistics on this many batches each epoch (0: off)
    # Exponential moving average of the weights (Polyak averaging), updated every step with this
    # decay; 0 = off. With it on, the averaged weights are validated, selected and saved (the raw
    # ones are kept in the checkpoint for --resume): on small cohorts they vary less from epoch to
    # epoch than the raw weights, which Adam moves a lot in a few steps.
    ema_decay: float = 0.0
    max_bad_steps: int = 20  # non-finite losses tolerated (steps skipped) before the run stops
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads (0: torch default)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "step_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.best_metric not in METRICS:
            raise ConfigError(f"train.best_metric {self.best_metric!r} is not one of {', '.join(METRICS)}")


@dataclass(frozen=True)
class ReliabilityConfig:
    """``[reliability]`` of a run config: what is fitted after training (see the module docstring)."""

    enabled: bool = True
    ood_method: Literal["mahalanobis", "energy"] = "mahalanobis"  # measured in bench/RESULTS.md
    # Share of in-distribution validation scans accepted: the threshold is this quantile of their scores.
    ood_quantile: float = 0.95
    # Answers more uncertain (normalised entropy) than a threshold are referred. By default the
    # threshold is fitted on the validation split: the largest one at which the validation scans
    # kept have an error rate <= target_risk (selective classification, Geifman & El-Yaniv 2017),
    # so it follows how good the model is. A number here fixes it instead (0.6: 0.8 / 0.1 / 0.1
    # over three classes is 0.58, an even split between two classes 0.63).
    refer_uncertainty: float | None = None
    target_risk: float = 0.05
    train_samples: int = 2000  # training inputs (random subset) whose features fit the density

    def __post_init__(self) -> None:
        if not 0.5 <= self.ood_quantile < 1.0:
            raise ConfigError(f"reliability.ood_quantile must be in [0.5, 1), got {self.ood_quantile}")
        if not 0.0 < self.target_risk < 1.0:
            raise ConfigError(f"reliability.target_risk must be in (0, 1), got {self.target_risk}")
        if self.refer_uncertainty is not None and not 0.0 < self.refer_uncertainty <= 1.0:
            raise ConfigError(
                f"reliability.refer_uncertainty must be in (0, 1], got {self.refer_uncertainty}"
            )
        if self.train_samples < 2:
            raise ConfigError(f"reliability.train_samples must be >= 2, got {self.train_samples}")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d


def run_config_from_dict(data: dict[str, Any], base_dir: str | Path = ".") -> RunConfig:
    """Validate a config dict; relative data paths are resolved against ``base_dir``."""
    known = {"data", "preprocess", "model", "train", "reliability"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid sections: {', '.join(sorted(known))}")
    for name in known & set(data):
        if not isinstance(data[name], dict):
            raise ConfigError(f"[{name}] must be a table, got {data[name]!r}")
    dcfg = from_dict(DataConfig, data.get("data", {}), "data")
    resolved = {}
    for key in ("manifest", "split", "cache_dir"):
        value = getattr(dcfg, key)
        if value and not Path(value).is_absolute():
            resolved[key] = str((Path(base_dir) / value).resolve())
    if resolved:
        dcfg = from_dict(DataConfig, {**to_dict(dcfg), **resolved}, "data")
    pre = data.get("preprocess", {})
    try:
        pcfg = PreprocessConfig.from_dict(pre)
    except TypeError as e:
        raise ConfigError(f"[preprocess]: {e}") from e
    mcfg = from_dict(ModelConfig, data.get("model", {}), "model")
    tcfg = from_dict(TrainConfig, data.get("train", {}), "train")
    rcfg = from_dict(ReliabilityConfig, data.get("reliability", {}), "reliability")
    _check_model(mcfg, dcfg)
    return RunConfig(data=dcfg, preprocess=pcfg, model=mcfg, train=tcfg, reliability=rcfg)


def _check_model(m: ModelConfig, d: DataConfig) -> None:
    from ctcovid.models import list_models, model_info
    from ctcovid.models.blocks import HEADS

    if m.name not in list_models():
        raise ConfigError(f"model.name: unknown model {m.name!r}; available: {', '.join(list_models())}")
    valid = model_info(m.name).arguments
    unknown = sorted(set(m.kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"model.kwargs: {', '.join(map(repr, unknown))} is not an argument of {m.name}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    head = m.kwargs.get("head", "linear")
    if head not in HEADS:
        raise ConfigError(f"model.kwargs.head: {head!r} is not one of {', '.join(HEADS)}")
    if head == "corn":
        _check_ordinal_labels(d)


def _check_ordinal_labels(d: DataConfig) -> None:
    """An ordinal head ranks the labels in their listed order: they must be ordered classes."""
    if d.task == "diagnosis" and not d.labels:
        raise ConfigError(
            "model.kwargs.head = 'corn' needs ordered classes, but data.task = 'diagnosis' "
            f"({', '.join(TASK_LABELS['diagnosis'])}) has no order; use data.task = 'severity', or "
            "'custom' with data.labels listed from the lowest grade to the highest"
        )
    if d.task == "custom" and not d.labels:
        return  # data.label_names() reports the missing labels when the run starts
    labels = d.label_names()
    if len(labels) < 2:
        raise ConfigError(
            f"model.kwargs.head = 'corn' ranks ordered classes and needs at least 2, "
            f"data.labels has {list(labels)}"
        )


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML run config, apply ``section.key=value`` overrides, validate."""
    raw = apply_overrides(load_toml(path), overrides or [])
    return run_config_from_dict(raw, Path(path).parent)
