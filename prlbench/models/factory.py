"""The model registry, the size presets and the one factory that builds every model.

`create_model(name, vocab_sizes=..., num_numerical=..., preset="small", **overrides)` looks the
class up in `MODELS`, takes the preset's values for the hyperparameters that class accepts,
applies the overrides (None-valued ones are dropped, as in timm, so a config whose fields mean
"not given" can be passed straight through) and checks them.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

from torch import nn

from prlbench.errors import ConfigError
from prlbench.registry import Registry

MODELS: Registry = Registry("model")

# The sizes. `paper` is MTReclib's (so BCE numbers compare with its table); `small` is for CPU
# runs and the synthetic data set: every width / 8 or so, about 100x fewer expert FLOPs.
# A model takes the entries its constructor names and ignores the rest. In PLE each width of
# `bottom_dims` is one extraction level (MTReclib's reading: 2 levels of 512 then 256).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "embed_dim": 128, "bottom_dims": (512, 256), "tower_dims": (128, 64), "dropout": 0.2,
        "num_experts": 8, "shared_experts": 4, "task_experts": 4, "num_critics": 5,
        "calibrator_weight": 0.6,
    },
    "small": {
        "embed_dim": 16, "bottom_dims": (64, 32), "tower_dims": (32, 16), "dropout": 0.1,
        "num_experts": 4, "shared_experts": 2, "task_experts": 2, "num_critics": 5,
        "calibrator_weight": 0.6,
    },
}
PRESET_DESCRIPTIONS = {
    "paper": "MTReclib's sizes (embed 128, experts 512-256, towers 128-64, 8 experts, dropout 0.2)",
    "small": "CPU sizes (embed 16, experts 64-32, towers 32-16, 4 experts, dropout 0.1)",
}
_DATA_ARGS = ("self", "vocab_sizes", "num_numerical")
_DIMS = ("bottom_dims", "tower_dims")
_COUNTS = ("embed_dim", "num_experts", "shared_experts", "task_experts", "num_critics")


def presets() -> dict[str, str]:
    """Preset name -> one-line description (for `prlbench ls models`)."""
    return dict(PRESET_DESCRIPTIONS)


def model_summaries() -> dict[str, str]:
    """Model name -> its one-line `summary`, in registry order."""
    return {name: MODELS.get(name).summary for name in MODELS.names()}


def hyperparameters(name: str) -> list[str]:
    """The options `create_model(name, ...)` accepts as overrides."""
    cls = _model_class(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in _DATA_ARGS]


def create_model(
    name: str, *, vocab_sizes: Sequence[int] | Mapping[str, int], num_numerical: int,
    preset: str = "small",
    **overrides: Any,
) -> nn.Module:
    """Build model `name` for a data set with these categorical vocabularies / numericals."""
    params = resolve_hyperparameters(name, preset, overrides)
    cls = _model_class(name)
    return cls(_check_vocab(vocab_sizes, num_numerical), int(num_numerical), **params)


def resolve_hyperparameters(name: str, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The preset's values for the options model `name` takes, the overrides applied, each
    checked: a ConfigError names a bad model, preset, option or value (no torch work done)."""
    valid = hyperparameters(name)
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; valid presets: "
                          f"{', '.join(MODEL_PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}"
        )
    params = {k: v for k, v in MODEL_PRESETS[preset].items() if k in valid}
    params.update(given)
    return {k: _check(name, k, v) for k, v in params.items()}


def _model_class(name: str) -> type:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS.names())}")
    return MODELS.get(name)


def _check(model: str, key: str, value: Any) -> Any:
    """Normalise one hyperparameter (dims -> tuple of ints) or raise a ConfigError naming it."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"model {model!r} option {key}={value!r}: {why}")

    if key in _DIMS:
        if isinstance(value, str):  # "512,256" from a command line
            value = [v for v in value.replace(" ", "").split(",") if v]
        try:
            dims = tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise bad("expected a list of positive integers, e.g. 512,256") from None
        if not dims or min(dims) < 1:
            raise bad("expected a non-empty list of positive integers, e.g. 512,256")
        return dims
    if key in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("expected a positive integer")
        return value
    if key == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise bad("expected a probability in [0, 1)")
    if key == "calibrator_weight" and not (isinstance(value, (int, float)) and value >= 0):
        raise bad("expected a non-negative number")
    return value


def _check_vocab(vocab_sizes: Sequence[int] | Mapping[str, int], num_numerical: int
                 ) -> list[int]:
    # The manifest's {column: size} mapping is accepted as is (its order is the columns' order).
    values = vocab_sizes.values() if isinstance(vocab_sizes, Mapping) else vocab_sizes
    try:
        sizes = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"vocab_sizes: expected sizes (a list in column order, or the "
                          f"manifest's mapping of column to size), got {vocab_sizes!r}") from None
    if any(v < 1 for v in sizes):
        raise ConfigError(f"vocab_sizes must be positive (got {sizes}); check the cache manifest")
    if int(num_numerical) < 0 or (not sizes and int(num_numerical) == 0):
        raise ConfigError(
            f"a model needs at least one feature field (vocab_sizes={sizes}, "
            f"num_numerical={num_numerical}); check the cache manifest"
        )
    return sizes
