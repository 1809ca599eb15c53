from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from ctcovid.config import apply_overrides, from_dict, load_toml, parse_override, to_dict
from ctcovid.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    epochs: int = 20
    name: Literal["adam", "sgd"] = "adam"


@dataclass(frozen=True)
class Run:
    model: str = "r3d_18"
    window_hu: tuple[float, float] = (-600.0, 1500.0)
    optim: Optim = field(default_factory=Optim)
    out: str | None = None


def test_from_dict_builds_nested_sections_and_coerces_numbers() -> None:
    cfg = from_dict(Run, {"model": "r3d_50", "window_hu": [-600, 1500], "optim": {"lr": 1, "epochs": 3}})
    assert cfg.model == "r3d_50"
    assert cfg.window_hu == (-600.0, 1500.0)
    assert cfg.optim == Optim(lr=1.0, epochs=3)


def test_unknown_key_names_key_and_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim.epoch'.*did you mean 'epochs'"):
        from_dict(Run, {"optim": {"epoch": 3}})


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"optim": {"epochs": "ten"}}, "optim.epochs: expected an integer"),
        ({"optim": {"epochs": True}}, "optim.epochs: expected an integer"),
        ({"optim": {"name": "rmsprop"}}, "optim.name: 'rmsprop' is not one of 'adam', 'sgd'"),
        ({"window_hu": [1, 2, 3]}, "window_hu: expected 2 values"),
        ({"out": 3}, "out: 3 does not match"),
    ],
)
def test_wrong_types_name_the_key(data: dict, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        from_dict(Run, data)


def test_overrides_parse_toml_values_and_bare_words() -> None:
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], 3e-4)
    assert parse_override("model=r3d_34") == (["model"], "r3d_34")
    assert parse_override("window_hu=[-500, 1000]") == (["window_hu"], [-500, 1000])
    cfg = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=0.5", "model=x"])
    assert cfg == {"optim": {"lr": 0.5}, "model": "x"}


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")


def test_load_toml_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match="bad.toml' is not valid TOML"):
        load_toml(bad)


def test_to_dict_round_trips() -> None:
    cfg = Run(optim=Optim(lr=0.1))
    assert from_dict(Run, to_dict(cfg)) == cfg
