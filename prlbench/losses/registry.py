"""The loss registry and its parameter checking.

A registered loss is `fn(outputs, click, conversion, **params) -> (total, parts)`: `outputs`
holds the model's "ctr" and "ctcvr" logits [B] (and optionally "cvr", ignored, and "aux_loss",
per-row terms [B] or a scalar, whose mean is added to every loss); `parts` are the detached,
unweighted pieces of the total. `register_loss` records each loss with its display name, its
one-line summary and its parameters (`Param`: default, flag, valid values).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from prlbench.errors import ConfigError
from prlbench.registry import Registry

LossFn = Callable[..., "tuple[Tensor, dict[str, Tensor]]"]
LOSSES: Registry[LossFn] = Registry("loss", "losses")
_INFO: dict[str, "LossInfo"] = {}


@dataclass(frozen=True)
class Param:
    """One loss parameter: its default, the command-line flag that sets it, its valid values."""

    default: Any
    flag: str
    choices: tuple[str, ...] = ()  # empty: a finite real number in [low, high]
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False  # True: > low (a temperature), else >= low
    # Added after runs were stored: at its default it is left out of the run id, so that the
    # runs made before it existed (which ran with exactly that default) are found again.
    added_later: bool = False

    def describe(self) -> str:
        """The valid values in words: "one of pairs, paper", "a number in [0, 1]"."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        low = f"{'>' if self.low_open else '>='} {self.low:g}"
        if math.isinf(self.high):
            return f"a finite number {low}"
        return f"a number {low} and <= {self.high:g}"

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.low_open else value >= self.low


@dataclass(frozen=True)
class LossInfo:
    """What is registered with a loss besides its function: how listings and reports name it
    and which parameters it takes."""

    name: str
    display_name: str  # in tables and plots: "PWiseR"
    summary: str  # one line for `prlbench ls losses`
    params: dict[str, Param]
    # What a caption says about an arm's settings ({key: [values]}, one value each when fixed)
    # beyond listing them: where they come from, what they equal. "" for nothing.
    note: Callable[[dict], str] = lambda settings: ""


def loss_info(name: str) -> LossInfo:
    LOSSES.get(name)  # unknown name -> error listing the valid ones
    return _INFO[name]


def loss_params(name: str) -> dict[str, Any]:
    """The default parameters of loss `name` (an empty dict for `bce`)."""
    return {key: p.default for key, p in loss_info(name).params.items()}


def loss_param_specs(name: str) -> dict[str, Param]:
    """Defaults, flags and valid values of loss `name`'s parameters (for the CLI and config)."""
    return dict(loss_info(name).params)


def all_params() -> dict[str, Param]:
    """Every parameter key of every registered loss -> its spec in the first loss that takes it
    ("lam" -> Param(0.5, "--lambda")). A key that several losses take has one flag and one kind
    (number or choice) for all of them; only its default may differ."""
    out: dict[str, Param] = {}
    for info in _INFO.values():
        for key, spec in info.params.items():
            first = out.setdefault(key, spec)
            if (first.flag, bool(first.choices)) != (spec.flag, bool(spec.choices)):
                raise RuntimeError(f"loss parameter {key!r} of {info.name!r} differs in flag or "
                                   "kind from the same key of another loss")
    return out


def takes(name: str, key: str) -> bool:
    """Whether loss `name` has parameter `key`."""
    return key in loss_info(name).params


def register_loss(name: str, summary: str, params: dict[str, Param], *,
                  display_name: str, note: Callable[[dict], str] | None = None
                  ) -> Callable[[LossFn], LossFn]:
    """Register `fn(outputs, click, conversion, **all_params)` under `name`.

    The registered callable checks the given params (unknown -> ConfigError, None -> default),
    calls `fn` with every parameter filled in, and adds the model's "aux_loss" if any.
    """

    def add(fn: LossFn) -> LossFn:
        def loss(outputs: dict, click: Tensor, conversion: Tensor, **given: Any):
            total, parts = fn(outputs, click, conversion, **resolve_params(name, given))
            return _add_aux(total, parts, outputs)

        loss.__name__, loss.__qualname__, loss.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        LOSSES.register(name)(loss)
        _INFO[name] = LossInfo(name, display_name, summary, dict(params),
                               **({"note": note} if note else {}))
        return loss

    return add


def single(settings: dict, key: str):
    """The one value of `key` in a caption's settings ({key: [values]}), else None."""
    values = settings.get(key) or []
    return values[0] if len(values) == 1 else None


def resolve_params(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of loss `name`: given values checked, None or missing -> the default."""
    specs = _INFO[name].params
    unknown = sorted(set(given) - set(specs))
    if unknown:
        valid = ", ".join(specs) or "none"
        raise ConfigError(
            f"loss {name!r} has no parameter {unknown[0]!r}; its parameters: {valid}"
            " (drop that setting, or choose a loss that has it)"
        )
    out = {}
    for key, spec in specs.items():
        value = given.get(key)
        out[key] = spec.default if value is None else _check_value(name, key, spec, value)
    return out


def _check_value(name: str, key: str, spec: Param, value: Any) -> Any:
    if not spec.accepts(value):
        raise ConfigError(f"loss {name!r}: {_named(key, spec)} must be {spec.describe()}; got "
                          f"{value!r} (the default is {spec.default})")
    return value if spec.choices else float(value)


def _named(key: str, spec: Param) -> str:
    """A parameter as the config file and the command line name it: loss.params.lam (--lambda)."""
    return f"loss.params.{key} ({spec.flag})"


def _add_aux(total: Tensor, parts: dict[str, Tensor], outputs: dict):
    # AITM's calibrator loss arrives already weighted; every loss adds it so arms stay comparable.
    aux = outputs.get("aux_loss")  # per row [B] (or already a mean); the loss adds its mean
    if aux is not None:
        aux = aux.mean() if aux.dim() else aux
        total = total + aux
        parts["aux"] = aux.detach()
    return total, parts
