"""What a compare means: the grid of runs (`Grid`) and everything else a compare is told
(`CompareConfig`), resolved from a YAML file and the command line's flags (flags win).

The grid is data sets x models x losses (x settings) x seeds. Settings given as lists are
candidates chosen on the validation split per data set, model and arm: loss settings (e.g.
--lambda 0.1,0.5,1) for the losses that take them, and the training settings every arm shares
(--lr, --weight-decay) for every arm, the baseline included. Each candidate is trained on the
tuning seeds (--tune-seeds: 1001, 1002 by default, never a reported seed), the one with the best
mean validation score wins, and only the winner runs on the reported seeds: the runs that choose
a setting never appear in the tables.

A loss in --losses may fix its own settings: `pwiser[norm=paper]` or `ranknet[head=both,
lam=0.4286]` is an arm of its own, beside plain `pwiser` and `ranknet`, so that two readings of
one loss share a table. Settings in brackets win over the flags for that arm.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from prlbench.config import (BASELINE, MAX_SEED, RunConfig, complete, load_yaml, resolve, shown,
                             validate)
from prlbench.data.datasets import DEFAULT_DATASET
from prlbench.errors import ConfigError
from prlbench import specs
from prlbench.data import variants

TESTS = ("twolevel", "wilcoxon", "ttest", "bootstrap")  # report.analysis.TESTS
TEST_SPLITS = ("standard", "random", "both")
CORRECTIONS = ("holm", "bh")
EXECUTORS = ("local", "ray")
FORMAT_ALIASES = {"md": "md", "markdown": "md", "latex": "tex", "tex": "tex", "csv": "csv"}
# The single-run settings a compare config file may not hold: the grid gives them.
# What the grid is when a flag is not given (the CLI shows these as its defaults).
DEFAULTS = {"datasets": DEFAULT_DATASET, "models": "mmoe", "losses": f"{BASELINE},pwiser,ranknet",
            "seeds": "8", "format": "md,latex"}
# The synthetic generator's knobs a compare can sweep: flag name -> knob of a data-set variant.
SWEEP_FLAGS = {k.option: k.short for k in variants.KNOBS.values() if k.sweep}
TUNE_SEED_BASE = 1000  # "--tune-seeds 2" = seeds 1001, 1002: clear of the reported 1..N
DEFAULT_TUNE_SEEDS = 2
# Training settings a compare may give as candidate lists, chosen per arm like loss settings.
TRAIN_TUNABLE = {"lr": "--lr", "weight_decay": "--weight-decay"}
MAX_SEEDS = 1000  # a bound checked before a range is built: "--seeds 1000000000" is a typo
GRID_AXES = ("datasets", "models", "losses", "seeds")
GRID_KEYS = {("data", "dataset"): "--datasets", ("model", "name"): "--models",
             ("loss", "name"): "--losses", ("train", "seed"): "--seeds"}


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    losses: tuple[str, ...]  # loss specs ("pwiser", "pwiser[norm=paper]"), the baseline first
    seeds: tuple[int, ...]
    # Loss parameter -> candidate values (one value: fixed; several: chosen on validation).
    loss_grid: dict = field(default_factory=dict)
    base: RunConfig = field(default_factory=RunConfig)
    # Training setting (TRAIN_TUNABLE) -> candidate values, shared by every arm.
    train_grid: dict = field(default_factory=dict)
    # The seeds candidates are chosen on (their validation scores averaged); never reported.
    tune_seeds: tuple[int, ...] = tuple(range(TUNE_SEED_BASE + 1,
                                              TUNE_SEED_BASE + 1 + DEFAULT_TUNE_SEEDS))

    def candidates(self, loss: str) -> list[dict]:
        """Every combination of the listed training settings and of the listed loss parameters
        that loss spec `loss` takes, with the settings fixed in its brackets. Training settings
        are keyed by their TRAIN_TUNABLE names (lr, weight_decay), loss settings by theirs."""
        return [{**t, **p} for t in _product(self.train_grid) for p in self._loss_candidates(loss)]

    def _loss_candidates(self, loss: str) -> list[dict]:
        from prlbench.losses import loss_params

        name, fixed = split_loss(loss)
        known = loss_params(name)
        keys = [k for k in self.loss_grid if k in known and k not in fixed]
        combos = itertools.product(*(self.loss_grid[k] for k in keys))
        return [{**dict(zip(keys, values)), **fixed} for values in combos]

    def check(self) -> None:
        """Validate every configuration of the grid up front: a bad option (e.g. a negative
        value in --lambda) fails before anything is trained, not when its turn comes. An empty
        axis is an error: a compare of nothing would replace the record of the last one."""
        for axis in GRID_AXES:
            if not getattr(self, axis):
                raise ConfigError(_empty(axis))
        seen: dict[str, str] = {}
        for d, m, loss in self.arms():
            for p in self.candidates(loss):
                cfg = self.config(d, m, loss, self.seeds[0], p)
                key = json.dumps(cfg.identity(), sort_keys=True, default=str)
                if seen.setdefault(key, loss) != loss:
                    raise ConfigError(f"--losses: {seen[key]} and {loss} give the same runs "
                                      f"({cfg.loss.name} with {shown(cfg.loss.params, 200)}); "
                                      "keep one of them")

    def arms(self) -> list[tuple[str, str, str]]:
        """(data set, model, loss) in the grid's order."""
        return list(itertools.product(self.datasets, self.models, self.losses))

    def tuned(self, loss: str) -> bool:
        """Whether arm `loss` has settings to choose (more than one candidate)."""
        return len(self.candidates(loss)) > 1

    def size(self) -> int:
        """Runs in the grid: every candidate of a tuned arm on each tuning seed, then one
        setting per arm on every reported seed."""
        tuning = sum(len(self.candidates(loss)) * len(self.tune_seeds)
                     for _, _, loss in self.arms() if self.tuned(loss))
        return tuning + len(self.arms()) * len(self.seeds)

    def config(self, dataset: str, model: str, loss: str, seed: int, params: dict) -> RunConfig:
        """The run of one arm with candidate `params` (loss settings and the TRAIN_TUNABLE
        training settings) on `seed`."""
        b = self.base
        train = {k: v for k, v in params.items() if k in TRAIN_TUNABLE}
        loss_params = {k: v for k, v in params.items() if k not in TRAIN_TUNABLE}
        cfg = replace(b, data=replace(b.data, dataset=dataset),
                      model=replace(b.model, name=model),
                      loss=replace(b.loss, name=split_loss(loss)[0], params=loss_params),
                      train=replace(b.train, seed=seed, **train))
        validate(cfg)
        return complete(cfg)

    def selection(self) -> dict:
        """What was chosen on validation, for the captions: {"seeds": the tuning seeds,
        "train": {setting: candidates} (every arm), "losses": {loss: {parameter: candidates}},
        "budget": {arm: candidates tried}}; empty when every setting is fixed."""
        losses: dict = {}
        budget = {}
        for loss in self.losses:
            cands = self._loss_candidates(loss)
            if len(cands) > 1:
                varied = {k: sorted({c[k] for c in cands}, key=str) for k in cands[0]
                          if len({c[k] for c in cands}) > 1}
                losses.setdefault(split_loss(loss)[0], {}).update(varied)
            if self.tuned(loss):
                budget[loss] = len(self.candidates(loss))
        train = {k: list(v) for k, v in self.train_grid.items() if len(v) > 1}
        if not budget:
            return {}
        return {"seeds": list(self.tune_seeds), "train": train, "losses": losses,
                "budget": budget}


@dataclass(frozen=True)
class CompareConfig:
    """A whole compare: the grid, the report's options and where the runs execute."""

    grid: Grid
    formats: tuple[str, ...] = ("md", "tex")  # the CSVs are always written
    cells: str = "std"  # what a paper-layout table cell shows beside its mean (--cells)
    test: str = "twolevel"
    correction: str = "holm"
    executor: str = "local"
    jobs: int | None = None
    threads: int | None = None
    ray_address: str | None = None
    tables_only: bool = False
    # Which test split the tables report: the data set's test split (standard), its
    # random-exposure split (random: KuaiRand-Pure's test_random), or both (two sets of tables).
    test_split: str = "standard"
    # Equivalence margins per metric kind ({"auc": 0.002}, metric units; --equivalence, read by
    # stats.parse_margins): two one-sided tests; None: no equivalence test.
    equivalence: dict | None = None
    # Train runs that differ only in seed and loss as packs (prlbench.engine.pack); None: not
    # given, the default: no packs (a pack is not faster, docs/training.md).
    pack: bool | None = None

    @property
    def packed(self) -> bool:
        """Whether the runs train packed: --pack, else not."""
        return bool(self.pack)

    @property
    def splits(self) -> tuple[str, ...]:
        """The evaluation splits the report reads, in order."""
        return {"standard": ("test",), "random": ("test_random",),
                "both": ("test", "test_random")}[self.test_split]

    @classmethod
    def resolve(cls, config_file: Path | None, flags: Mapping[str, Any]) -> "CompareConfig":
        """From the command line's `flags` (the compare options by name; None: not given) and
        an optional YAML file of what every run shares (model, loss.params, train)."""
        data, file_params = _compare_file(config_file)
        base = resolve(config_file, {
            "model": {"preset": flags.get("preset")},
            "train": {k: flags.get(k) for k in ("epochs", "batch_size", "patience",
                                                "precision", "device",
                                                "embedding_optimizer", "max_steps")},
        }, finish=False, file_data=data)
        grid = _grid(flags, base, file_params, config_file)
        options = {k: flags[k] for k in ("test", "correction", "executor", "jobs", "threads",
                                         "ray_address", "tables_only", "test_split",
                                         "equivalence", "pack", "cells")
                   if flags.get(k) is not None}
        if "equivalence" in options:
            options["equivalence"] = margins(options["equivalence"])
        cc = cls(grid=grid, formats=parse_formats(_given(flags, "format")), **options)
        cc.check()
        grid.check()
        return cc

    def check(self) -> None:
        from prlbench.report.caption import CELLS

        margins(self.equivalence)
        checks = [(self.test in TESTS,
                   f"--test must be {', '.join(TESTS[:-1])} or {TESTS[-1]}, got {self.test!r}"),
                  (self.test_split in TEST_SPLITS, "--test-split must be standard, random or "
                   f"both, got {self.test_split!r}"),
                  (self.correction in CORRECTIONS,
                   f"--correction must be holm or bh, got {self.correction!r}"),
                  (self.executor in EXECUTORS,
                   f"--executor must be local or ray, got {self.executor!r}"),
                  (self.cells in CELLS, f"--cells must be {', '.join(CELLS[:-1])} or "
                   f"{CELLS[-1]}, got {self.cells!r}")]
        for flag, value in (("--jobs", self.jobs), ("--threads", self.threads)):
            checks.append((value is None or value >= 1,
                           f"{flag} must be >= 1, got {value} (leave it out for the default)"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def stats_options(self) -> dict:
        return {"test": self.test, "correction": self.correction,
                "equivalence": self.equivalence}

    def test_record(self, alpha: float = 0.05) -> dict:
        """compare.json's `test`: how the tables' markers were decided."""
        return {"name": self.test, "correction": self.correction, "alpha": alpha,
                "equivalence": margins(self.equivalence)}


def margins(value) -> dict | None:
    """--equivalence as margins per metric kind (stats.parse_margins), a ConfigError if bad."""
    from prlbench.errors import DataError
    from prlbench.stats import parse_margins

    try:
        return parse_margins(value)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _grid(flags: Mapping[str, Any], base: RunConfig, file_params: dict,
          config_file: Path | None) -> Grid:
    from prlbench.models import MODELS

    for axis in GRID_AXES:  # an empty shell variable ("--models $MODELS") means no grid
        if not _names(_given(flags, axis)):
            raise ConfigError(_empty(axis))
    loss_specs = parse_losses(_given(flags, "losses"))
    loss_names = tuple(dict.fromkeys(split_loss(x)[0] for x in loss_specs))
    if BASELINE not in loss_specs:
        raise ConfigError(f"--losses must include {BASELINE}, the baseline every loss is "
                          "compared to")
    loss_grid = _flag_params(flags, loss_names)
    _add_file_params(loss_grid, file_params, loss_names, config_file)
    seeds = parse_seeds(_given(flags, "seeds"))
    return Grid(datasets=_datasets(flags),
                models=tuple(MODELS.resolve(_given(flags, "models"))),
                losses=(BASELINE,) + tuple(x for x in loss_specs if x != BASELINE),
                seeds=seeds, loss_grid=loss_grid, base=base, train_grid=_train_grid(flags),
                tune_seeds=parse_tune_seeds(flags.get("tune_seeds"), seeds))


def _datasets(flags: Mapping[str, Any]) -> tuple[str, ...]:
    """--datasets, each generated data set expanded over the swept generator knobs
    (--noise-rate 0,0.3 -> synthetic[noise=0], synthetic[noise=0.3])."""
    from prlbench.data import variants

    names = variants.split_datasets(_given(flags, "datasets"))
    sweep = {}
    for key, knob in SWEEP_FLAGS.items():
        values = _float_list(flags, key, "--" + key.replace("_", "-"), "the generator's default")
        if values is None:
            continue
        if key == "rows":
            if not all(float(v).is_integer() for v in values):
                raise ConfigError(f"--rows must be whole numbers, got {shown(flags[key])}")
            values = [int(v) for v in values]
        sweep[knob] = list(dict.fromkeys(values))
    return tuple(variants.expand(names, sweep))


def parse_losses(text: str) -> tuple[str, ...]:
    """"bce,pwiser,pwiser[norm=paper,lam=1]" -> each spec checked and written canonically
    ("pwiser[lam=1,norm=paper]"); "all" -> every registered loss; repeats dropped."""
    from prlbench.losses import LOSSES

    parts = specs.split_list(text, "--losses",
                             "a loss's own settings as pwiser[norm=paper,lam=1]")
    if parts == ["all"]:
        return tuple(LOSSES.names())
    return tuple(dict.fromkeys(_canonical(p) for p in parts))


def split_loss(spec: str) -> tuple[str, dict]:
    """"pwiser[lam=1,norm=paper]" -> ("pwiser", {"lam": 1.0, "norm": "paper"}), each setting
    checked against the loss's parameters."""
    from prlbench.losses import LOSSES, loss_param_specs, resolve_params

    try:
        name, items = specs.parse(spec)
    except specs.SpecError as e:
        name = str(spec).partition("[")[0].strip()
        LOSSES.get(name)  # an unknown loss names the valid ones
        if e.reason in ("brackets misplaced", "empty brackets"):
            raise ConfigError(f"--losses: {shown(spec)}: write a loss's own settings as "
                              "name[key=value,...], e.g. pwiser[norm=paper]") from None
        raise ConfigError(f"--losses: {shown(spec)}: {e.reason}") from None
    LOSSES.get(name)  # an unknown loss names the valid ones
    if items is None:
        return name, {}
    params, fixed = loss_param_specs(name), {}
    for key, value in items:
        if key in params and not params[key].choices:
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"--losses: {shown(spec)}: {key} must be a number, got "
                                  f"{shown(value)}") from None
        fixed[key] = value
    resolve_params(name, fixed)  # unknown keys and bad values: the loss's own message
    return name, fixed


def _canonical(spec: str) -> str:
    name, fixed = split_loss(spec)
    return specs.write(name, sorted(fixed.items()))


def _product(grid: dict) -> list[dict]:
    """{"lr": [1, 2], "weight_decay": [0]} -> [{"lr": 1, "weight_decay": 0}, {"lr": 2, ...}]."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _names(text: str) -> list[str]:
    return [n.strip() for n in str(text).split(",") if n.strip()]


def _empty(axis: str) -> str:
    what = ("a count (8 = seeds 1..8) or a list (1,2,3)" if axis == "seeds" else
            f"at least one name (prlbench ls {axis})")
    return (f"--{axis} is empty; give {what}, or leave the flag out for the default "
            f"({DEFAULTS[axis]})")


def _given(flags: Mapping[str, Any], key: str) -> Any:
    value = flags.get(key)
    return DEFAULTS[key] if value is None else value


def _flag_params(flags: Mapping[str, Any], loss_names: tuple[str, ...]) -> dict:
    """Every loss parameter given on the command line: its candidates (one value: fixed; a
    comma-separated list: chosen on validation), numbers parsed, choices checked by the loss."""
    from prlbench.losses import LOSSES, all_params, takes

    grid = {}
    for key, spec in all_params().items():
        text = flags.get(key)
        if text is None:
            continue
        values = (_names(text) if spec.choices else parse_floats(str(text), spec.flag))
        if not values:
            raise ConfigError(f"{spec.flag} is empty; give a value or a comma-separated list, "
                              "or leave the flag out for each loss's default")
        users = [n for n in loss_names if takes(n, key)]
        if not users:
            takers = [n for n in LOSSES.names() if takes(n, key)]
            raise ConfigError(f"{spec.flag}: none of the losses {', '.join(loss_names)} takes "
                              f"it (it is a parameter of {', '.join(takers)}); drop the flag or "
                              "add such a loss to --losses")
        grid[key] = list(dict.fromkeys(values))  # no repeats
    return grid


def _add_file_params(loss_grid: dict, file_params: dict, loss_names: tuple[str, ...],
                     config_file: Path | None) -> None:
    """The file's loss.params: values or candidate lists; a flag given for a key wins."""
    from prlbench.losses import all_params, loss_params

    for key, value in file_params.items():
        if key not in all_params():
            raise ConfigError(f"{config_file}: loss.params.{shown(key)} is no loss's parameter; "
                              f"valid keys: {', '.join(all_params())}")
        if value == [] or value is None:
            raise ConfigError(f"{config_file}: loss.params.{key} is empty; give a value or a "
                              "list of candidates, or remove the key")
        values = list(dict.fromkeys(value)) if isinstance(value, list) else [value]
        loss_grid.setdefault(key, values)
        if not any(key in loss_params(n) for n in loss_names):
            raise ConfigError(f"{config_file}: loss.params.{key}: none of the losses "
                              f"{', '.join(loss_names)} takes it; remove it or add a loss that "
                              "does to --losses")


def _compare_file(config: Path | None) -> tuple[dict, dict]:
    """A --config file for compare: (the file without its loss section, loss.params). The grid
    comes from --datasets / --models / --losses / --seeds, so the file may not name them."""
    if config is None:
        return {}, {}
    data = dict(load_yaml(config))
    for (section, key), flag in GRID_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"{config}: {section}.{key} is a single run's setting; compare "
                              f"takes it from {flag} (remove it from the file)")
    loss = data.pop("loss", None) or {}
    if not isinstance(loss, dict) or set(loss) - {"params"}:
        raise ConfigError(f"{config}: the loss section of a compare config may hold only params "
                          "(the losses come from --losses)")
    params = loss.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{config}: loss.params: expected a mapping of names to values")
    return data, params


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """"0.1,0.5,1" -> [0.1, 0.5, 1.0]; None stays None."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected a number or a comma-separated list, got "
                          f"{shown(text)}") from None


def parse_seeds(text: str) -> tuple[int, ...]:
    """"8" -> seeds 1..8; "1,2,3" -> those seeds. At most MAX_SEEDS seeds, each in
    [0, 2**63), checked before any range is built."""
    parts = _names(text)
    if not parts:
        raise ConfigError(_empty("seeds"))
    if len(parts) > MAX_SEEDS:
        raise ConfigError(_too_many(f"{len(parts):,}"))
    try:
        numbers = [int(s) for s in parts]
    except ValueError:  # also a number of more than 4,300 digits
        raise ConfigError(f"--seeds: expected a count (6) or a list (1,2,3), got "
                          f"{shown(text)}") from None
    if "," not in str(text):
        if numbers[0] > MAX_SEEDS:
            raise ConfigError(_too_many(f"{numbers[0]:,}" if numbers[0] < 10**30 else "more"))
        numbers = list(range(1, numbers[0] + 1))
    if not numbers or len(set(numbers)) != len(numbers) or min(numbers) < 0:
        raise ConfigError(f"--seeds: need at least one seed, none negative and no repeats, got "
                          f"{shown(text)}")
    if max(numbers) >= MAX_SEED:
        raise ConfigError(f"--seeds: seeds are whole numbers from 0, each below 2**63 (what the "
                          f"tables hold), got {shown(text)}")
    return tuple(numbers)


def parse_tune_seeds(text: str | None, seeds: tuple[int, ...]) -> tuple[int, ...]:
    """--tune-seeds: a count (2 = seeds 1001, 1002) or a list; none of them a reported seed
    (a setting chosen on a seed and then reported on it biases its delta upward)."""
    if text is None:
        text = str(DEFAULT_TUNE_SEEDS)
    parts = _names(str(text))
    if "," not in str(text) and len(parts) == 1 and parts[0].isdigit():
        n = int(parts[0])
        if not 1 <= n <= MAX_SEEDS:
            raise ConfigError(f"--tune-seeds: give a count from 1 to {MAX_SEEDS} (2 is the "
                              f"default) or a list of seeds, got {shown(text)}")
        tune = tuple(range(TUNE_SEED_BASE + 1, TUNE_SEED_BASE + 1 + n))
    else:
        try:
            tune = parse_seeds(str(text) if "," in str(text) else f"{text},")
        except ConfigError as e:
            raise ConfigError(str(e).replace("--seeds", "--tune-seeds")) from None
    overlap = sorted(set(tune) & set(seeds))
    if overlap:
        raise ConfigError(f"--tune-seeds {shown(text)} and --seeds share seed"
                          f"{'s' if len(overlap) > 1 else ''} {', '.join(map(str, overlap))}: "
                          "a setting chosen on a seed that is also reported biases its delta; "
                          "give disjoint seeds (a count such as --tune-seeds 2 uses 1001, 1002)")
    return tune


def _train_grid(flags: Mapping[str, Any]) -> dict:
    """--lr / --weight-decay: one value (every run) or a list (chosen per arm on validation)."""
    grid = {}
    for key, flag in TRAIN_TUNABLE.items():
        values = _float_list(flags, key, flag, "the default")
        if values is not None:
            grid[key] = list(dict.fromkeys(values))
    return grid


def _float_list(flags: Mapping[str, Any], key: str, flag: str, default: str) -> list | None:
    """A flag's comma-separated numbers; None when not given; empty is an error."""
    values = parse_floats(flags.get(key), flag)
    if values == []:
        raise ConfigError(f"{flag} is empty; give a value or a comma-separated list, or leave "
                          f"the flag out for {default}")
    return values


def _too_many(count: str) -> str:
    return (f"--seeds: {count} seeds asked for; a compare takes at most {MAX_SEEDS} seeds "
            "(8 to 30 are usual)")


def parse_formats(text: str) -> tuple[str, ...]:
    out = []
    for f in (x.strip() for x in text.split(",") if x.strip()):
        if f not in FORMAT_ALIASES:
            raise ConfigError(f"--format: unknown format {shown(f)}; valid: md, latex (the CSVs "
                              "are always written)")
        out.append(FORMAT_ALIASES[f])
    return tuple(out)
