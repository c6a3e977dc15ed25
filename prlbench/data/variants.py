"""Variants of a generated data set, named like loss specs: `synthetic[noise=0.5]`.

A variant fixes some of the generator's options (its *knobs*) in brackets; the others stay at
the generator's defaults (preprocess_synthetic's signature). Each variant is a data set of its
own: its cache folder is named by its parameters (`synthetic-conversion0.05-noise0.5`), it is
generated on first use and reused afterwards, and its manifest records the canonical id
(`synthetic[conversion=0.05,noise=0.5]`) and the knobs.

    >>> canonical("synthetic[noise_rate=0.50, conversion=.05]")
    'synthetic[conversion=0.05,noise=0.5]'
    >>> cache_name("synthetic[conversion=0.05,noise=0.5]")
    'synthetic-conversion0.05-noise0.5'

The plain name (`synthetic`) is not a variant: its folder is `synthetic` and it holds whatever
`prlbench preprocess synthetic` built there (the defaults unless other flags were given).

Knob dictionaries (`parse_dataset`, `knobs`, `expand`'s sweep) are keyed by the generator's
option names (noise_rate, click_rate, conversion_rate, rows, seed), which are also its flags
(--noise-rate ...); the short names (noise, click, conversion, rows, seed) are how a spec is
written. Either is accepted on input.

This module imports no numpy / pyarrow at load time (the CLI's help must stay instant); the
generator is imported only to validate a variant's values and read its defaults.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from prlbench.data.datasets import DATASETS, DatasetSpec
from prlbench import specs
from prlbench.errors import CacheError, ConfigError, PrlbenchError, UnknownNameError


@dataclass(frozen=True)
class Knob:
    short: str      # in a spec: synthetic[noise=0.5]
    option: str     # the generator's keyword argument (and flag, with dashes)
    integer: bool
    meaning: str    # an axis label
    default: float | int  # the generator's default (preprocess_synthetic's signature reads it)
    help: str       # what the flags' help says it is
    sweep: bool = True  # a compare may sweep it (--noise-rate 0,0.3,...)

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


# The synthetic generator's options, in canonical (short-name) order: the one home of their
# names, defaults and help. The generator's signature, preprocess's and compare's flags, the
# sweeps and the variant specs are all read from here; check_options checks the values.
KNOBS: dict[str, Knob] = {k.option: k for k in (
    Knob("click", "click_rate", False, "P(click)", 0.05, "P(click)"),
    Knob("conversion", "conversion_rate", False, "P(conversion | click)", 0.1,
         "P(conversion | click)"),
    Knob("noise", "noise_rate", False, "noise clicks / all clicks", 0.3,
         "share of clicks that are noise"),
    Knob("rows", "rows", True, "training impressions", 100_000,
         "training impressions, the validation split included"),
    Knob("seed", "seed", True, "generator seed", 0, "generator seed", sweep=False),
)}


def knob_help(option: str) -> str:
    """"synthetic: P(click) (default 0.05)": a flag's help, from KNOBS."""
    knob = KNOBS[option]
    return f"synthetic: {knob.help} (default {specs.number(knob.default)})"
class UnknownDataset(ConfigError, UnknownNameError):
    """A name that is not a registered data set (caught as either kind of error)."""


_BY_NAME = {**{k.short: k for k in KNOBS.values()}, **KNOBS}
_EXAMPLE = "synthetic[noise=0.5] or synthetic[click=0.02,conversion=0.05]"


# ------------------------------------------------------------------------------ parsing
def parse_dataset(spec: str) -> tuple[str, dict[str, float | int]]:
    """"synthetic[noise=0.5,rows=5e4]" -> ("synthetic", {"noise_rate": 0.5, "rows": 50000}).

    The base must be a registered data set; knobs only for a generated one, each checked by
    the generator's own validation (the other options at its defaults). Every problem is a
    ConfigError naming the spec and what to do."""
    base, items = _parse(str(spec))
    return base, dict(items)


@functools.lru_cache(maxsize=512)
def _parse(spec: str) -> tuple[str, tuple[tuple[str, float | int], ...]]:
    try:
        name, items = specs.parse(spec)
    except specs.SpecError as e:
        if e.reason == "brackets misplaced":
            raise ConfigError(f"data set {_q(spec)}: write a variant as name[knob=value,...], "
                              f"e.g. {_EXAMPLE}") from None
        if e.reason == "empty brackets":
            name = str(spec).partition("[")[0].strip()
            raise ConfigError(f"data set {_q(spec)}: empty brackets; write {name}, or a variant "
                              f"such as {_EXAMPLE}") from None
        if e.reason.endswith("is given twice"):
            key = e.reason.removesuffix(" is given twice")
            raise ConfigError(f"data set {_q(spec)}: {_knob(key, spec).short} is given twice; "
                              "give it once") from None
        raise ConfigError(f"data set {_q(spec)}: {e.reason.replace('key=value', 'knob=value')}; "
                          f"write e.g. {_EXAMPLE}") from None
    if name not in DATASETS:
        raise UnknownDataset(f"unknown data set {_q(name)}; valid data sets: "
                             f"{', '.join(DATASETS.names())}")
    if items is None:
        return name, ()
    spec_ = DATASETS.get(name)
    if not spec_.generated:
        generated = [n for n in DATASETS if DATASETS.get(n).generated]
        raise ConfigError(f"data set {_q(spec)}: knobs in brackets apply to generated data sets "
                          f"only ({', '.join(generated)}), not to {name}; write {name}")
    knobs: dict[str, float | int] = {}
    for key, value in items:
        knob = _knob(key, spec)
        if knob.option in knobs:
            raise ConfigError(f"data set {_q(spec)}: {knob.short} is given twice; give it once")
        knobs[knob.option] = _number(value, knob, spec)
    _validate(name, knobs, spec)
    return name, tuple((o, knobs[o]) for o in KNOBS if o in knobs)


def _knob(key: str, spec: str) -> Knob:
    if key not in _BY_NAME:
        valid = ", ".join(f"{k.short} ({k.flag})" for k in KNOBS.values())
        raise ConfigError(f"data set {_q(spec)}: unknown knob {_q(key)}; valid knobs: {valid}")
    return _BY_NAME[key]


def _number(value: Any, knob: Knob, spec: str) -> float | int:
    """A knob's value as a number: int for rows / seed (5e4 -> 50000), float for rates."""
    if isinstance(value, bool):
        raise ConfigError(f"data set {_q(spec)}: {knob.short}={value!r} is not a number")
    if isinstance(value, (int, float)):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text) if knob.integer and re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise ConfigError(f"data set {_q(spec)}: {knob.short}={_q(text)} is not a number; "
                              f"write e.g. {knob.short}="
                              f"{'50000' if knob.integer else '0.5'}") from None
    if knob.integer:
        # 5e4 is 50000; 2.5 stays a float, which the generator's check refuses
        if isinstance(number, float) and math.isfinite(number) and number.is_integer():
            number = int(number)
        return number
    return float(number)


def _validate(base: str, knobs: Mapping[str, float | int], spec: str) -> None:
    """The generator's own checks (`check_options`), on the defaults updated by `knobs`."""
    full = {**generator_defaults(base), **knobs}
    if set(KNOBS) - full.keys():  # pragma: no cover - a generator without these options
        return
    try:
        check_options(full["rows"], full["seed"], full["click_rate"], full["conversion_rate"],
                      full["noise_rate"])
    except ConfigError as e:
        named = [f"{k.short}= is {k.flag}" for k in KNOBS.values() if k.flag in str(e)]
        raise ConfigError(f"data set {_q(spec)}: {e}" + (f" (in brackets, {', '.join(named)})"
                                                          if named else "")) from None


def check_options(rows: int, seed: int, click_rate: float, conversion_rate: float,
                  noise_rate: float) -> None:
    """The synthetic generator's checks of its options (preprocess_synthetic calls it, and so
    does every variant spec): one place for their messages, which name the flags."""
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < 1000:
        raise ConfigError(f"--rows must be an integer >= 1000, got {rows!r}")
    check_rows_fit(int(rows))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    for flag, value in (("--click-rate", click_rate), ("--conversion-rate", conversion_rate)):
        if not _real(value) or not 0 < value < 1:
            raise ConfigError(f"{flag} must be in (0, 1), got {value!r}")
    if not _real(noise_rate) or not 0 <= noise_rate < 1:
        raise ConfigError(f"--noise-rate must be in [0, 1), got {noise_rate!r}")
    if conversion_rate >= 1 - noise_rate:
        raise ConfigError(f"--conversion-rate ({conversion_rate}) must be below 1 - --noise-rate "
                          f"({1 - noise_rate:g}): noise clicks never convert; lower one of them")


# The generator's memory: about GEN_BYTES_PER_ROW per training row (its test split, a quarter
# as large, included) above GEN_BASE_BYTES, measured at 100,000 and 400,000 rows (peak RSS of
# prlbench preprocess: 0.25 and 0.49 GB). MAX_ROWS: the largest real data set (Ali-CCP's
# ~42 M training and ~43 M test impressions) rounded up.
GEN_BYTES_PER_ROW = 810
GEN_BASE_BYTES = 170e6
MAX_ROWS = 100_000_000


def check_rows_fit(rows: int, memory: float | None = None) -> None:
    """Refuse, at once, a synthetic size that is above MAX_ROWS or whose generation would not
    fit in this machine's memory (`memory`: bytes, default the physical memory here)."""
    need = GEN_BASE_BYTES + GEN_BYTES_PER_ROW * rows
    if memory is None:
        memory = physical_memory()
    fits = int((memory - GEN_BASE_BYTES) / GEN_BYTES_PER_ROW) if memory else MAX_ROWS
    bound = max(1000, min(MAX_ROWS, fits))
    if rows <= bound:
        return
    why = (f"its generation would need about {need / 1e9:,.1f} GB of memory (about "
           f"{GEN_BYTES_PER_ROW} bytes per row)"
           + (f", above the {memory / 1e9:,.1f} GB this machine has" if memory and need > memory
              else "")
           + (f"; the bound is {MAX_ROWS:,} rows, the size of the largest real data set"
              if rows > MAX_ROWS else ""))
    raise ConfigError(f"--rows {rows:,} is too large: {why}; use at most {bound:,} rows here")


def physical_memory() -> float | None:
    """Bytes of physical memory, where the OS says (None elsewhere)."""
    import os

    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value)


@functools.lru_cache(maxsize=8)
def generator_defaults(base: str = "synthetic") -> dict[str, float | int]:
    """The knobs' defaults (KNOBS; the generator's signature reads them from there too)."""
    return {o: k.default for o, k in KNOBS.items()}


def _q(text: str) -> str:
    return repr(str(text)) if len(str(text)) <= 80 else repr(str(text)[:77] + "...")


# ---------------------------------------------------------------------------- names
fmt = specs.number  # a knob value written shortest: 0.5, 0.05, 1e-05, 50000


def canonical(spec: str) -> str:
    """One spelling per variant: short names, sorted, numbers shortest
    ("synthetic[conversion=0.05,noise=0.5]"); a spec without knobs is the plain name."""
    base, items = _parse(str(spec))
    return specs.write(base, [(KNOBS[o].short, v) for o, v in items])


def is_variant(dataset_id: str) -> bool:
    return "[" in str(dataset_id)


def cache_name(dataset_id: str) -> str:
    """The cache folder's name: the plain name as it is ("synthetic", never looked up);
    a variant's readable, shell-safe name ("synthetic-conversion0.05-noise0.5"), one per
    canonical spec."""
    if not is_variant(dataset_id):
        return str(dataset_id)
    base, items = _parse(str(dataset_id))
    return "-".join([base, *(f"{KNOBS[o].short}{fmt(v)}" for o, v in items)])


def base_name(dataset_id: str) -> str:
    return _parse(str(dataset_id))[0]


def knobs(dataset_id: str) -> dict[str, float | int]:
    """The knobs a spec fixes, by the generator's option names ({} for a plain name)."""
    return dict(_parse(str(dataset_id))[1])


def params(dataset_id: str) -> dict[str, float | int]:
    """Every generator option of a variant: the defaults updated by its knobs."""
    base, items = _parse(str(dataset_id))
    return {**generator_defaults(base), **dict(items)}


def spec_of(dataset_id: str) -> DatasetSpec:
    """The registry's spec of a data set or of a variant's base (a ConfigError for a bad id)."""
    return DATASETS.get(base_name(dataset_id))


def display_name(dataset_id: str) -> str:
    """"Synthetic (conversion 0.05, noise 0.5)"; a plain name: the registry's display name;
    an id that does not parse: as it is."""
    try:
        base, items = _parse(str(dataset_id))
    except PrlbenchError:
        return str(dataset_id)
    shown = DATASETS.get(base).display_name
    if not items:
        return shown
    words = [f"{KNOBS[o].short} {f'{v:,}' if o == 'rows' else fmt(v)}" for o, v in items]
    return f"{shown} ({', '.join(words)})"


# ------------------------------------------------------------------------ lists, sweeps
def split_datasets(text: str) -> list[str]:
    """A --datasets value: commas inside brackets do not split; each id written canonically,
    repeats dropped; "all" -> every registered data set."""
    parts = specs.split_list(text, "--datasets", f"a variant as {_EXAMPLE}")
    if parts == ["all"]:
        return DATASETS.names()
    return list(dict.fromkeys(canonical(p) for p in parts))


def expand(datasets: list[str], sweep: Mapping[str, Any] | None) -> list[str]:
    """Every generated data set of `datasets` once per combination of the swept knob values
    (the product, in the order given); a data set that is not generated is kept as it is,
    unless something is swept (then it is an error). Returns canonical ids, repeats dropped.

    expand(["synthetic"], {"noise_rate": [0.1, 0.5]})
      -> ["synthetic[noise=0.1]", "synthetic[noise=0.5]"]
    """
    sweep = {k: list(v) for k, v in (sweep or {}).items() if v is not None and len(list(v))}
    options: dict[str, list] = {}
    for key, values in sweep.items():
        knob = _BY_NAME.get(key)
        if knob is None:
            raise ConfigError(f"unknown generator option {_q(key)}; valid: "
                              f"{', '.join(k.option for k in KNOBS.values())}")
        if knob.option in options:
            raise ConfigError(f"{knob.flag} is swept twice; give its values once")
        options[knob.option] = values
    out: list[str] = []
    for ds in datasets:
        base, fixed = parse_dataset(ds)
        if not options:
            out.append(canonical(ds))
            continue
        if not DATASETS.get(base).generated:
            generated = [n for n in DATASETS if DATASETS.get(n).generated]
            flags = ", ".join(KNOBS[o].flag for o in options)
            raise ConfigError(f"{flags} applies to the {' and '.join(generated)} data set only, "
                              f"not to {base}; sweep it on {generated[0]} alone")
        both = [o for o in options if o in fixed]
        if both:
            k = KNOBS[both[0]]
            raise ConfigError(f"{canonical(ds)} fixes {k.short}={fmt(fixed[k.option])} in its "
                              f"brackets and {k.flag} sweeps it too; give it in one place")
        for combo in itertools.product(*options.values()):
            knobs_ = {**fixed}
            for option, value in zip(options, combo):
                knobs_[option] = _number(value, KNOBS[option], f"{base} {KNOBS[option].flag}")
            body = ",".join(f"{KNOBS[o].short}={fmt(v)}" for o, v in knobs_.items())
            out.append(canonical(f"{base}[{body}]"))
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- caches
def manifest_params(dataset_id: str) -> dict[str, float | int]:
    """What a variant's preprocess_synthetic records besides the generator's parameters
    (the knobs, under "knobs"); empty for a plain name, whose manifest is as it always was."""
    k = knobs(dataset_id)
    return {"knobs": k} if k else {}


def check_manifest(dataset_id: str, manifest: Mapping, folder: Path) -> None:
    """A variant's folder must hold that variant: its manifest's data set id and generator
    parameters must be the ones its name says, else a CacheError that says to delete the
    folder (never silently reuse a wrong cache). A plain name is not checked."""
    if not is_variant(dataset_id):
        return
    want_id, want = canonical(dataset_id), params(dataset_id)
    got = manifest.get("params") if isinstance(manifest.get("params"), Mapping) else {}
    wrong = [f"{KNOBS[o].short}={fmt(got[o]) if o in got else 'missing'} (not {fmt(v)})"
             for o, v in want.items() if got.get(o) != v]
    if manifest.get("dataset") != want_id:
        wrong.insert(0, f"the data set {manifest.get('dataset')!r} (not {want_id!r})")
    if wrong:
        raise CacheError(f"{folder} should hold {want_id} but its manifest.json records "
                         f"{'; '.join(wrong)}: delete the folder (rm -r "
                         f"{shlex.quote(str(folder))}) and it is generated again on first use")
