"""One entry point for every data set: look up its spec, call its preprocessor."""

from __future__ import annotations

import shlex
from pathlib import Path

from prlbench.data import variants
from prlbench.data.cache import (MANIFEST, _read_manifest, cache_folder, dataset_dir,
                                 dataset_exclusive, dataset_lock, sweep_stale)
from prlbench.data.datasets import DEFAULT_DATASET
from prlbench.errors import CacheError, ConfigError

# The synthetic generator's options (preprocess_synthetic's), refused for downloaded data.
SYNTHETIC_OPTIONS = tuple(variants.KNOBS)  # the generator's options (variants.KNOBS)
# Options of one data set's preprocessor, refused for every other data set.
DATASET_OPTIONS = {"kuairand_pure": ("conversion", "drop_unclicked_deep")}


def preprocess(name: str, data_dir: Path, *, source: Path | None = None, progress: bool = True,
               **options) -> dict:
    """Build `data_dir/name/` from `source` (default: `data_dir/name/raw`); returns the manifest.

    `name` may be a variant of a generated data set ("synthetic[noise=0.5]"): it is generated
    with its knobs into its own folder (`variants.cache_name`); generator flags are refused
    for it (they belong in its brackets)."""
    base, knobs = variants.parse_dataset(name)
    spec = variants.spec_of(name)
    given = {k: v for k, v in options.items() if v is not None}
    if knobs:
        wrong = [k for k in given if k in SYNTHETIC_OPTIONS]
        if wrong:
            flag = "--" + wrong[0].replace("_", "-")
            raise ConfigError(f"{flag}: the variant {variants.canonical(name)} takes its "
                              "generator options from its name; write them in its brackets "
                              f"(e.g. {base}[{variants.KNOBS[wrong[0]].short}=...,...])")
        given = {**given, "dataset": variants.canonical(name)}  # the knobs travel in its name
    for owner, own in DATASET_OPTIONS.items():
        wrong = [k for k in given if k in own and owner != base]
        if wrong:
            raise ConfigError(f"--{wrong[0].replace('_', '-')} applies only to the {owner} data "
                              f"set, not to {name}")
    if spec.generated:
        if source is not None:
            raise ConfigError(f"--source: the {name} data set is generated, it has no source")
        if "max_unmatched" in given:
            raise ConfigError("--max-unmatched applies to the real data sets' joins, not to "
                              f"the {name} data set")
    else:
        wrong = [k for k in given if k in SYNTHETIC_OPTIONS]
        if wrong:
            flag = "--" + wrong[0].replace("_", "-")
            raise ConfigError(f"{flag} applies only to the synthetic data set, not to {name}")
        if source is not None:
            given["source"] = Path(source).expanduser()
            _check_source_outside_cache(given["source"], dataset_dir(data_dir, name))
    # One download or preprocess of a data set at a time, from before the inputs are read
    # (a download still writing raw/ is waited for) until the new cache is in place.
    # And never while a run trains or scores on the data set (dataset_exclusive refuses).
    with dataset_lock(Path(data_dir), name), dataset_exclusive(Path(data_dir), name):
        sweep_stale(cache_folder(data_dir, name))  # a swap killed halfway: raw/ back first
        return spec.preprocess_fn()(Path(data_dir), progress=progress, **spec.options, **given)


def _check_source_outside_cache(source: Path, cache: Path) -> None:
    """The cache folder is replaced as a whole (only raw/ is carried over), so a source
    elsewhere inside it would be deleted by the very preprocess that reads it."""
    src, cache = source.resolve(), cache.resolve()
    if src.is_relative_to(cache) and not src.is_relative_to(cache / "raw"):
        raise ConfigError(f"--source {source} is inside the cache folder {cache}, which "
                          "preprocess replaces as a whole (only its raw/ folder is kept); "
                          f"move the files out of it, or into {cache / 'raw'}, and rerun")


def ensure_generated(data_dir: Path, name: str = DEFAULT_DATASET, *,
                     progress: bool = True) -> None:
    """A generated data set (the default one among them) is built on first use, so everything
    runs out of the box; a downloaded one is left alone (it needs the user's files). Only
    when there is no cache at all: the user's own (other rows, another seed) is never
    replaced by the default data.

    A variant ("synthetic[noise=0.5]") is generated with exactly its knobs (the other options
    at the generator's defaults) into its own folder; a folder whose manifest records other
    parameters than its name says is a CacheError (delete it), never reused."""
    spec, knobs = variants.spec_of(name), variants.knobs(name)
    where = dataset_dir(data_dir, name)
    manifest = where / MANIFEST
    if not spec.generated:
        return
    if manifest.exists():
        _check_variant(name, manifest, where)
        return
    with dataset_lock(Path(data_dir), name):
        folder = cache_folder(data_dir, name)
        sweep_stale(folder)  # a swap killed between its renames: the user's cache comes back
        if manifest.exists():  # put back, or built by another process while we waited
            _check_variant(name, manifest, where)
            return
        if folder.is_dir() and any(folder.iterdir()):
            if knobs:
                raise CacheError(
                    f"{where} has no manifest.json: the cache of {variants.canonical(name)} is "
                    f"damaged; delete the folder (rm -r {shlex.quote(str(where))}) and it is "
                    "generated again on first use")
            raise CacheError(
                f"{where} has no manifest.json: the cache is damaged, and is "
                f"not replaced by the default data; rebuild it with: prlbench preprocess "
                f"{name} --data-dir {shlex.quote(str(data_dir))} (with the options you built "
                "it with), or delete the folder to get the default data set")
        extra = {"dataset": variants.canonical(name)} if knobs else {}
        with dataset_exclusive(Path(data_dir), name):
            spec.preprocess_fn()(Path(data_dir), progress=progress, **spec.options, **extra)


def _check_variant(name: str, manifest: Path, folder: Path) -> None:
    """A variant's existing cache must be that variant (the plain name is not read)."""
    if variants.is_variant(name):
        variants.check_manifest(name, _read_manifest(manifest, name), folder)
