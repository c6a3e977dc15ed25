"""Run configuration: frozen dataclasses, resolved as defaults < YAML file < command-line flags.

`None` always means "not given", so a flag left out never overrides the file, and a key left out
of the file never overrides the default. A run's identity is the hash of the parts of its
resolved config that can change its numbers (not the device, the thread count or the folders).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from prlbench.data.datasets import DEFAULT_DATASET
from prlbench.errors import ConfigError

# The loss every other loss is compared with, paired by seed (and the default loss). Named here,
# not in prlbench.losses, because the report and the command line read it without torch.
BASELINE = "bce"
# Seeds run from 0 to 2**63 - 1: torch takes up to 2**64 - 1, but the tables and compare.json
# hold seeds as signed 64-bit integers (pandas), so a larger one could not be reported.
MAX_SEED = 2**63


@dataclass(frozen=True)
class DataConfig:
    dataset: str = DEFAULT_DATASET


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mmoe"
    # None: the data set's default_preset ("paper" on the paper's data sets, "small" on synthetic
    # and KuaiRand-Pure).
    preset: str | None = None
    # Architecture overrides passed to create_model (e.g. {"embed_dim": 32}).
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    name: str = BASELINE
    # Loss parameters (lam, m1, m2, phi, score, head); missing ones take the loss's defaults.
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    epochs: int = 10
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 1e-6
    patience: int = 2
    precision: str = "fp32"
    # Rows per forward pass when scoring. Each row's score is its own in eval mode, but a GEMM's
    # last bits can depend on how many rows it takes, so a size other than the default is part
    # of the run id. 4096 rather than 16384 since 2026-12-05: the activations of a larger pass
    # were the largest part of a job's own memory while it scored.
    eval_batch_size: int = 4096
    # Start each output head at the logit of its training base rate (see README).
    init_bias: bool = True
    # How the embedding tables are trained (prlbench.engine.optim): adam (dense, the default and
    # what every published table used), sparse_adam or rowwise_adagrad (rows in the batch only).
    # Added later: left out of the run id at its default, so earlier runs keep their ids.
    embedding_optimizer: str = "adam"
    # Stop after this many optimizer steps in all (0: no limit), the epoch under way ending
    # there (validated, best.pt kept): smoke runs and benchmarks on large data. Added later.
    max_steps: int = 0
    # Neither changes the numbers on CPU, so neither is part of the run id.
    device: str = "cpu"
    threads: int | None = None
    checkpoint_every_s: float = 60.0


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        return _merge(cls(), d, "config")

    def identity(self) -> dict:
        """The parts that define the run's results (device, threads, folders excluded). A loss
        parameter added in a later version is left out at its default, the behaviour every
        earlier run had, so those runs keep their ids and are reused."""
        from prlbench.losses import LOSSES, loss_param_specs
        from prlbench.models import MODELS

        d = self.to_dict()
        for key in ("device", "threads", "checkpoint_every_s"):
            d["train"].pop(key)
        if self.loss.name in LOSSES:
            for key, spec in loss_param_specs(self.loss.name).items():
                if spec.added_later and d["loss"]["params"].get(key) == spec.default:
                    del d["loss"]["params"][key]
        for key, default in TRAIN_LEFT_OUT_AT_DEFAULT.items():
            if d["train"].get(key) == default:
                del d["train"][key]
        # A model whose computation changed since prlbench 0.3 (models.layers.COMPUTATION)
        # says which it runs: its runs are new runs, never confused with the old ones.
        computation = (MODELS.get(self.model.name).computation
                       if self.model.name in MODELS else 1)
        if computation > 1:
            d["model"]["computation"] = computation
        return d


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}
PRECISIONS = ("fp32", "bf16")
EMBEDDING_OPTIMIZERS = ("adam", "sparse_adam", "rowwise_adagrad")
# train settings left out of identity() at their default, so that the ids of the runs made
# before the setting existed (or before it counted) do not change: added in a later version
# (embedding_optimizer, max_steps), or part of the id only when not the default
# (eval_batch_size, see TrainConfig).
TRAIN_LEFT_OUT_AT_DEFAULT = {"embedding_optimizer": "adam", "max_steps": 0,
                             "eval_batch_size": TrainConfig.eval_batch_size}


def _merge(base: Any, updates: Mapping[str, Any], where: str) -> Any:
    """Return `base` (a dataclass) with `updates` applied, recursing into sections."""
    if not isinstance(updates, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(updates).__name__}")
    valid = {f.name: f for f in fields(base)}
    changes = {}
    for key, value in updates.items():
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {shown(key)}; valid keys: {', '.join(valid)}")
        if value is None:
            continue
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{where}.{key}")
        elif isinstance(current, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{key}: expected a mapping of names to values, got "
                                  f"{shown(value)}")
            changes[key] = {**current, **{k: v for k, v in value.items() if v is not None}}
        else:
            changes[key] = _typed(value, valid[key].type, f"{where}.{key}")
    return replace(base, **changes)


def _typed(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against a field's annotation ("int", "float", "str | None", ...); a
    YAML string like "1e-3" (YAML 1.1 reads exponents without a dot as text) becomes a float."""
    kinds = {str(annotation).replace(" ", "").split("|")[0]}
    if "float" in kinds:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    elif "int" in kinds:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "a whole number"
    elif "bool" in kinds:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif "str" in kinds:
        if isinstance(value, str):
            return value
        expected = "a name (text)"
    else:
        return value
    raise ConfigError(f"{where}: expected {expected}, got {shown(value)}")


def shown(value: Any, limit: int = 80) -> str:
    """`value`'s repr for a message, at most `limit` characters: a file's value may be huge,
    and a message is one line. reprlib stops early, so a huge value is never written out."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    text = " ".join(r.repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines; this bounds what parsing can cost
MAX_CONFIG_DEPTH = 32  # sections nest two or three levels


class _Refused(Exception):
    """What the YAML loader below refuses, said as the message's tail."""


def _safe_loader():
    """yaml's SafeLoader without aliases (`*name`: one line can expand to gigabytes, the
    "billion laughs") and with a nesting limit (deep nesting exhausts the recursion)."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise _Refused(f"line {mark.line + 1} uses a YAML alias (*name); prlbench does "
                               "not expand aliases: write the value out")
            if self.depth >= MAX_CONFIG_DEPTH:
                raise _Refused(f"nested too deeply (more than {MAX_CONFIG_DEPTH} levels)")
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config {path}: no such file")
    text = _config_text(path)
    data = _parse_yaml(text, path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of sections "
                          f"({', '.join(_SECTIONS)})")
    return data


def _config_text(path: Path) -> str:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: {path.stat().st_size:,} bytes; a config file is "
                          f"at most {MAX_CONFIG_BYTES:,} bytes (is it the right file?)")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a UTF-8 text file; give a YAML file") from None


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_safe_loader())  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        raise ConfigError(f"--config {path}: {e}") from None
    except RecursionError:
        raise ConfigError(f"--config {path}: nested too deeply") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({_yaml_problem(e)})") from None


def _yaml_problem(e: Exception) -> str:
    """A YAML error in one line: the problem and where (its str() spans several lines)."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return shown(" ".join(str(e).split()), 160)


def resolve(config_file: Path | None, flags: Mapping[str, Any], *,
            finish: bool = True, file_data: Mapping[str, Any] | None = None) -> RunConfig:
    """defaults < YAML file < flags (a nested mapping whose None values mean 'not given').

    `finish=False` leaves the preset and loss defaults open (a grid fills them per run);
    `file_data` is the file's content when the caller has read (and trimmed) it already."""
    cfg = RunConfig()
    data: Mapping[str, Any] = {}
    if config_file is not None:
        data = load_yaml(config_file) if file_data is None else file_data
        cfg = _merge(cfg, data, str(config_file))
    cfg = _merge(cfg, flags, "flags")
    try:
        validate(cfg)
    except ConfigError as e:  # a value out of range: name the file where the file set it
        key = _bad_key(str(e))
        if config_file is not None and key and _given(data, key) and not _given(flags, key):
            raise ConfigError(f"{config_file}: {e}") from None
        raise
    return complete(cfg) if finish else cfg


def _bad_key(message: str) -> tuple[str, ...]:
    """The setting a validation message is about: ("train", "lr") for "train.lr (--lr) must
    be ...", ("loss", "params", "lam") for "... loss.params.lam (--lambda) ..."."""
    m = re.search(r"\b(train|model|loss|data)\.([\w.]+)", message)
    return (m.group(1), *m.group(2).split(".")) if m else ()


def _given(mapping: Mapping[str, Any] | None, key: tuple[str, ...]) -> bool:
    """Whether the nested mapping sets `key` (None: not given)."""
    for part in key:
        if not isinstance(mapping, Mapping) or mapping.get(part) is None:
            return False
        mapping = mapping[part]
    return True


def complete(cfg: RunConfig) -> RunConfig:
    """Fill what depends on other choices: the preset and the loss's default parameters,
    so that the stored config (and the run id) says exactly what ran."""
    from prlbench.losses import loss_params

    preset = cfg.model.preset or default_preset(cfg.data.dataset)
    params = {**loss_params(cfg.loss.name), **cfg.loss.params}
    return replace(cfg, model=replace(cfg.model, preset=preset),
                   loss=replace(cfg.loss, params=params))


def default_preset(dataset: str) -> str:
    """The model size a data set gets when none is asked for (its spec says which)."""
    from prlbench.data.variants import spec_of

    return spec_of(dataset).default_preset  # a variant ("synthetic[noise=0.5]"): its base's


def validate(cfg: RunConfig) -> None:
    """Check names and ranges, so a bad value fails before any data is read."""
    from prlbench.registry import UnknownNameError

    t = cfg.train
    finite = {k: math.isfinite(getattr(t, k)) for k in ("lr", "weight_decay", "checkpoint_every_s")}
    checks = [
        (0 <= t.seed < MAX_SEED, f"{_key('seed')} must be >= 0 and < 2**63, got "
                                 f"{shown(t.seed, 30)}"),
        (t.epochs >= 1, f"{_key('epochs')} must be >= 1, got {t.epochs}"),
        (t.batch_size >= 2, f"{_key('batch_size')} must be >= 2, got {t.batch_size}"),
        (t.max_steps >= 0, f"{_key('max_steps')} must be >= 0 (0: no limit), got "
                           f"{t.max_steps}"),
        (t.lr > 0 and finite["lr"], f"{_key('lr')} must be a finite number > 0, got {t.lr}"),
        (t.weight_decay >= 0 and finite["weight_decay"],
         f"{_key('weight_decay')} must be a finite number >= 0, got {t.weight_decay}"),
        (t.patience >= 1, f"{_key('patience')} must be >= 1, got {t.patience}"),
        (t.precision in PRECISIONS, f"{_key('precision')} must be one of "
                                    f"{', '.join(PRECISIONS)}, got {shown(t.precision)}"),
        (t.embedding_optimizer in EMBEDDING_OPTIMIZERS,
         f"{_key('embedding_optimizer')} must be one of {', '.join(EMBEDDING_OPTIMIZERS)}, got "
         f"{shown(t.embedding_optimizer)}"),
        (t.threads is None or t.threads >= 1, f"{_key('threads')} must be >= 1, got {t.threads}"),
        (re.fullmatch(r"cpu|cuda(:\d+)?", t.device) is not None,
         f"{_key('device')} must be cpu, cuda or cuda:N (N: the GPU's number), got "
         f"{shown(t.device)}"),
        (t.eval_batch_size >= 1, f"{_key('eval_batch_size')} must be >= 1, got "
                                 f"{t.eval_batch_size}"),
        (t.checkpoint_every_s > 0 and finite["checkpoint_every_s"],
         f"{_key('checkpoint_every_s')} must be a finite number > 0, got {t.checkpoint_every_s}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        from prlbench.data.variants import spec_of

        spec_of(cfg.data.dataset)  # a registered name, or a valid variant of a generated one
    except UnknownNameError as e:
        raise ConfigError(str(e)) from e
    _validate_model_and_loss(cfg)


# train settings that `prlbench train` also takes as a flag
_TRAIN_FLAGS = ("seed", "epochs", "batch_size", "lr", "patience", "device", "precision",
                "threads", "embedding_optimizer", "max_steps")


def _key(name: str) -> str:
    """A setting as the config file names it, with its flag where it has one:
    train.lr (--lr), train.weight_decay."""
    flag = f" (--{name.replace('_', '-')})" if name in _TRAIN_FLAGS else ""
    return f"train.{name}{flag}"


def _validate_model_and_loss(cfg: RunConfig) -> None:
    from prlbench.losses import LOSSES, resolve_params
    from prlbench.models import MODELS
    from prlbench.models.factory import resolve_hyperparameters
    from prlbench.registry import UnknownNameError

    try:
        MODELS.get(cfg.model.name)
        LOSSES.get(cfg.loss.name)
    except UnknownNameError as e:
        raise ConfigError(str(e)) from e
    # The preset is None until complete() picks the data set's default; option names and
    # values are checked the same way under any preset.
    resolve_hyperparameters(cfg.model.name, cfg.model.preset or "small",
                            dict(cfg.model.overrides or {}))
    resolve_params(cfg.loss.name, dict(cfg.loss.params))


def config_hash(cfg: RunConfig, data_sha: str = "") -> str:
    payload = json.dumps({"config": cfg.identity(), "data": data_sha}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def run_id(cfg: RunConfig, data_sha: str = "") -> str:
    """Stable, readable id: dataset-model-loss-seed plus 10 hex digits of the config hash."""
    c = cfg
    return (f"{c.data.dataset}-{c.model.name}-{c.loss.name}-s{c.train.seed}-"
            f"{config_hash(cfg, data_sha)[:10]}")
