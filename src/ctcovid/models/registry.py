"""Model registry: every architecture is a named builder (timm's ``_registry.py`` pattern).

``@register_model`` records a builder under its function name, ``create_model(name, **kwargs)``
builds it and ``list_models()`` lists the names the CLI and the tests loop over. Each entry also
carries the metadata later stages need without building a (possibly 100M-parameter) network: the
expected input (:class:`InputSpec`) and the layer Grad-CAM should hook.

The errors raised here are the only exceptions ``ctcovid.models`` defines; ``models/`` imports
nothing but torch and itself, so they subclass the built-in ``KeyError``/``ValueError`` and the
CLI can map :class:`ModelError` to a one-line message.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

__all__ = [
    "DuplicateModelError",
    "InputSpec",
    "ModelArgumentError",
    "ModelError",
    "ModelInfo",
    "UnknownModelError",
    "WeightLoadError",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]


class ModelError(Exception):
    """Base class of the errors ``ctcovid.models`` raises on bad input."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; people should read it plainly.
        return str(self.args[0]) if self.args else ""


class DuplicateModelError(ModelError, ValueError):
    """A second builder registered under a name already taken."""


class ModelArgumentError(ModelError, ValueError, TypeError):
    """A builder argument that the model does not take, or a value out of range.

    Also a ``TypeError`` because that is what Python raises for an unexpected keyword.
    """


class WeightLoadError(ModelError, ValueError):
    """A checkpoint that cannot be mapped onto a model (see :mod:`ctcovid.models.weights`)."""


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: channel count and a typical spatial size.

    ``size`` is ``(D, H, W)`` for volume models and ``(H, W)`` for slice models; it is a hint
    (for example inputs, export and the synthetic cohort), not a requirement: every model here
    ends in global average pooling and takes any size large enough for its strides.
    """

    in_channels: int
    size: tuple[int, ...]

    @property
    def spatial_dims(self) -> int:
        return len(self.size)


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: the builder and what is known about the model without building it."""

    name: str
    builder: Callable[..., nn.Module]
    default_input: InputSpec
    gradcam_layer: str

    @property
    def summary(self) -> str:
        """First line of the builder's docstring."""
        doc = inspect.getdoc(self.builder) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def arguments(self) -> dict[str, Any]:
        """The builder's keyword arguments and their defaults."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


_REGISTRY: dict[str, ModelInfo] = {}

_VOLUME_INPUT = InputSpec(in_channels=1, size=(32, 128, 128))

F = TypeVar("F", bound=Callable[..., nn.Module])


@overload
def register_model(fn: F, /) -> F: ...
@overload
def register_model(
    *, name: str | None = None, default_input: InputSpec = ..., gradcam_layer: str = "layer4"
) -> Callable[[F], F]: ...
def register_model(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    default_input: InputSpec = _VOLUME_INPUT,
    gradcam_layer: str = "layer4",
) -> F | Callable[[F], F]:
    """Register a model builder, bare (``@register_model``) or with metadata.

    Args:
        fn: The builder; its name is the model name unless ``name`` is given. Builders take
            keyword arguments only (``in_channels``, ``num_classes``, ``dropout``, options).
        name: Register under this name instead of the function's.
        default_input: Expected channels and typical size (defaults to one-channel CT volumes
            of 32 x 128 x 128 voxels).
        gradcam_layer: Dotted name of the submodule whose activations Grad-CAM should use.

    Raises:
        DuplicateModelError: If the name is already registered.
    """

    def decorator(builder: F) -> F:
        key = name or builder.__name__
        if key in _REGISTRY:
            existing = _REGISTRY[key].builder
            raise DuplicateModelError(
                f"model name '{key}' is already registered by {existing.__module__}.{existing.__qualname__}; "
                "pick another name"
            )
        positional = [
            p.name
            for p in inspect.signature(builder).parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        if positional:
            raise ModelArgumentError(
                f"builder '{key}' must take keyword arguments only (put '*' before {', '.join(positional)})"
            )
        _REGISTRY[key] = ModelInfo(key, builder, default_input, gradcam_layer)
        return builder

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered model names, optionally filtered by a shell pattern (``"r3d_*"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``.

    Raises:
        UnknownModelError: If no model of that name is registered; the message lists them.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownModelError(
            f"unknown model '{name}'{hint}; available: {', '.join(list_models())}"
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments.

    Example:
        >>> model = create_model("r3d_18", in_channels=1, num_classes=3)  # doctest: +SKIP

    Raises:
        UnknownModelError: If ``name`` is not registered.
        ModelArgumentError: If a keyword is not an argument of that model (the message names it
            and lists the valid ones) or a value is out of range.
    """
    info = model_info(name)
    valid = info.arguments
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ModelArgumentError(
            f"model '{name}' got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    return info.builder(**kwargs)
