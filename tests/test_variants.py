"""Variants of the synthetic data set (`synthetic[noise=0.5]`): parsing, canonical ids, cache
names, generation on first use into their own folders, reuse, and the run config."""

import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prlbench.cli import app
from prlbench.config import default_preset, resolve
from prlbench.data import variants as v
from prlbench.data.cache import MANIFEST, data_hash, dataset_dir, open_cache
from prlbench.data.loader import load_side, load_split
from prlbench.data.preprocess import ensure_generated, preprocess
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.errors import CacheError, ConfigError
from prlbench.registry import UnknownNameError

NOISY = "synthetic[noise=0.5,rows=3000]"
CLEAN = "synthetic[noise=0.1,rows=3000]"


# ------------------------------------------------------------------------- parsing, names
@pytest.mark.parametrize("spelling", [
    "synthetic[noise=0.5,conversion=0.05]", "synthetic[conversion=0.05,noise=0.5]",
    " synthetic[ noise_rate = .50 , conversion_rate=5e-2 ] ",
])
def test_spellings_of_one_variant_have_one_canonical_id_and_folder(spelling):
    assert v.canonical(spelling) == "synthetic[conversion=0.05,noise=0.5]"
    assert v.cache_name(spelling) == "synthetic-conversion0.05-noise0.5"
    assert v.parse_dataset(spelling) == ("synthetic", {"conversion_rate": 0.05,
                                                       "noise_rate": 0.5})
    assert v.display_name(spelling) == "Synthetic (conversion 0.05, noise 0.5)"


@pytest.mark.parametrize("spec, canonical, folder", [
    ("synthetic", "synthetic", "synthetic"),
    ("aliexpress_nl", "aliexpress_nl", "aliexpress_nl"),
    ("synthetic[rows=5e4]", "synthetic[rows=50000]", "synthetic-rows50000"),
    ("synthetic[noise=0]", "synthetic[noise=0]", "synthetic-noise0"),
    ("synthetic[noise=0.00001]", "synthetic[noise=1e-05]", "synthetic-noise1e-05"),
    ("synthetic[seed=7,click=0.02]", "synthetic[click=0.02,seed=7]", "synthetic-click0.02-seed7"),
])
def test_canonical_ids_and_cache_names(spec, canonical, folder):
    assert v.canonical(spec) == canonical
    assert v.cache_name(spec) == folder
    assert v.base_name(spec) in ("synthetic", "aliexpress_nl")
    assert v.spec_of(spec).name == v.base_name(spec)


def test_knob_types_and_display():
    assert v.knobs("synthetic[rows=5e4,seed=3,noise=0]") == {"noise_rate": 0.0, "rows": 50000,
                                                             "seed": 3}
    assert isinstance(v.knobs("synthetic[rows=5e4]")["rows"], int)
    assert v.knobs("synthetic") == {}
    assert v.display_name("synthetic") == "Synthetic"
    assert v.display_name("synthetic[rows=50000]") == "Synthetic (rows 50,000)"
    assert v.display_name("aliccp") == "Ali-CCP"


def test_generator_defaults_are_preprocess_synthetics():
    sig = inspect.signature(preprocess_synthetic).parameters
    assert v.generator_defaults() == {k: sig[k].default for k in
                                      ("click_rate", "conversion_rate", "noise_rate", "rows",
                                       "seed")}
    assert v.params("synthetic[noise=0.5]")["noise_rate"] == 0.5
    assert v.params("synthetic[noise=0.5]")["rows"] == sig["rows"].default


@pytest.mark.parametrize("spec, fragment", [
    ("synthetic[noise=1.5]", r"'synthetic\[noise=1.5\]'.*--noise-rate must be in \[0, 1\)"),
    ("synthetic[noise=1]", r"--noise-rate must be in \[0, 1\)"),
    ("synthetic[click=-0.1]", r"--click-rate must be in \(0, 1\), got -0.1"),
    ("synthetic[conversion=0.75]", r"--conversion-rate \(0.75\) must be below 1 - --noise-rate"),
    ("synthetic[conversion=0.5,noise=0.6]", r"must be below 1 - --noise-rate \(0.4\)"),
    ("synthetic[rows=10]", r"--rows must be an integer >= 1000, got 10"),
    ("synthetic[rows=2500.5]", r"--rows must be an integer"),
    ("synthetic[seed=-1]", r"--seed must be a non-negative integer"),
    ("synthetic[noise=nan]", r"--noise-rate must be in \[0, 1\), got nan"),
    ("synthetic[foo=1]", r"unknown knob 'foo'; valid knobs: click \(--click-rate\), "
                         r"conversion .*noise .*rows .*seed"),
    ("synthetic[noise=abc]", r"noise='abc' is not a number"),
    ("synthetic[noise]", r"'noise' is not knob=value; write e.g. synthetic\[noise=0.5\]"),
    ("synthetic[noise=0.5", r"write a variant as name\[knob=value,...\], e.g. synthetic\["),
    ("synthetic[noise=0.5]x", r"write a variant as name\[knob=value"),
    ("synthetic[]", r"empty brackets; write synthetic"),
    ("synthetic[noise=0.1,noise_rate=0.2]", r"noise is given twice"),
    ("aliccp[noise=0.1]", r"knobs in brackets apply to generated data sets only \(synthetic\), "
                          r"not to aliccp"),
])
def test_bad_specs_are_config_errors_naming_the_fix(spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        v.canonical(spec)
    with pytest.raises(ConfigError, match=fragment):
        v.cache_name(spec)


def test_an_unknown_data_set_is_both_kinds_of_error():
    for kind in (ConfigError, UnknownNameError):
        with pytest.raises(kind, match="unknown data set 'nope'; valid data sets: .*synthetic"):
            v.parse_dataset("nope[noise=0.1]")


def test_split_datasets_keeps_brackets_together_and_drops_repeats():
    assert v.split_datasets("synthetic, synthetic[noise=0.5,click=0.02],aliccp,"
                            "synthetic[click=0.02,noise=.5],synthetic") == [
        "synthetic", "synthetic[click=0.02,noise=0.5]", "aliccp"]
    assert "kuairand_pure" in v.split_datasets("all")
    with pytest.raises(ConfigError, match="--datasets: unbalanced brackets"):
        v.split_datasets("synthetic[noise=0.5,aliccp")
    with pytest.raises(ConfigError, match="--datasets: unbalanced brackets"):
        v.split_datasets("synthetic]noise=0.5[")


def test_expand_sweeps_the_product_of_knob_values():
    assert v.expand(["synthetic", "synthetic[click=0.02]"],
                    {"noise_rate": [0.1, 0.5], "rows": ["3000"]}) == [
        "synthetic[noise=0.1,rows=3000]", "synthetic[noise=0.5,rows=3000]",
        "synthetic[click=0.02,noise=0.1,rows=3000]", "synthetic[click=0.02,noise=0.5,rows=3000]"]
    assert v.expand(["synthetic[noise=0.5]", "aliccp"], {}) == ["synthetic[noise=0.5]", "aliccp"]
    assert v.expand(["synthetic"], {"noise": [0.3, "0.30"]}) == ["synthetic[noise=0.3]"]
    assert v.expand(["synthetic"], {"noise_rate": None}) == ["synthetic"]


@pytest.mark.parametrize("datasets, sweep, fragment", [
    (["synthetic", "aliccp"], {"noise_rate": [0.1]},
     r"--noise-rate applies to the synthetic data set only, not to aliccp"),
    (["synthetic[noise=0.2]"], {"noise": [0.1]},
     r"synthetic\[noise=0.2\] fixes noise=0.2 in its brackets and --noise-rate sweeps it too"),
    (["synthetic"], {"noise_rate": [0.95]}, r"--conversion-rate \(0.1\) must be below"),
    (["synthetic"], {"colour": [1]}, r"unknown generator option 'colour'"),
])
def test_expand_errors(datasets, sweep, fragment):
    with pytest.raises(ConfigError, match=fragment):
        v.expand(datasets, sweep)


def test_a_run_config_takes_a_variant_and_its_bases_preset():
    cfg = resolve(None, {"data": {"dataset": "synthetic[noise=0.5]"}})
    assert cfg.data.dataset == "synthetic[noise=0.5]" and cfg.model.preset == "small"
    assert default_preset("synthetic[rows=5000]") == default_preset("synthetic")
    with pytest.raises(ConfigError, match="--noise-rate must be in"):
        resolve(None, {"data": {"dataset": "synthetic[noise=2]"}})
    with pytest.raises(ConfigError, match="valid data sets"):
        resolve(None, {"data": {"dataset": "nope"}})


# -------------------------------------------------------------------------- the caches
def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_variant_is_generated_on_first_use_into_its_own_folder_then_reused(tmp_path):
    ensure_generated(tmp_path, "synthetic[rows=3000,noise=0.5]", progress=False)
    folder = tmp_path / "synthetic-noise0.5-rows3000"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no lock left
    assert dataset_dir(tmp_path, NOISY) == folder
    m = open_cache(tmp_path, NOISY)
    assert m["dataset"] == NOISY
    assert m["params"]["knobs"] == {"noise_rate": 0.5, "rows": 3000}
    assert (m["params"]["noise_rate"], m["params"]["rows"], m["params"]["seed"]) == (0.5, 3000, 0)
    assert m["params"]["click_rate"] == 0.05  # the others at the defaults
    realised = m["params"]["realised_train"]["noise_rate"]
    assert abs(realised - 0.5) < 0.12, realised  # ~150 clicks: the rate is realised
    side = load_side(tmp_path, NOISY, "train")
    data = load_split(tmp_path, NOISY, "train")
    assert len(data) == len(side["genuine"]) == m["splits"]["train"]["rows"]
    clicks = data.click.numpy() == 1
    assert abs(1 - side["genuine"][clicks].mean() - 0.5) < 0.12  # noise share of the clicks

    before = _mtimes(folder)
    ensure_generated(tmp_path, "synthetic[noise=0.50,rows=3e3]", progress=False)  # reused
    assert _mtimes(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_two_variants_have_their_own_data_and_hashes(tmp_path):
    for ds in (NOISY, CLEAN):
        ensure_generated(tmp_path, ds, progress=False)
    assert data_hash(tmp_path, NOISY) != data_hash(tmp_path, CLEAN)
    assert data_hash(tmp_path, NOISY) == open_cache(tmp_path, NOISY).data_sha256
    assert data_hash(tmp_path / "synthetic-noise0.1-rows3000") == data_hash(tmp_path, CLEAN)
    noisy, clean = (open_cache(tmp_path, d)["params"]["realised_train"]["noise_rate"]
                    for d in (NOISY, CLEAN))
    assert noisy > clean + 0.2


@pytest.mark.parametrize("tamper, fragment", [
    ("params", r"records noise=0.2 \(not 0.5\)"),
    ("dataset", r"records the data set 'synthetic' \(not 'synthetic\[noise=0.5,rows=3000\]'\)"),
])
def test_a_variant_folder_holding_other_parameters_is_an_error(tmp_path, tamper, fragment):
    ensure_generated(tmp_path, NOISY, progress=False)
    path = dataset_dir(tmp_path, NOISY) / MANIFEST
    m = json.loads(path.read_text())
    if tamper == "params":
        m["params"]["noise_rate"] = 0.2
    else:
        m["dataset"] = "synthetic"
    path.write_text(json.dumps(m))
    before = _mtimes(path.parent)
    for use in (lambda: ensure_generated(tmp_path, NOISY, progress=False),
                lambda: open_cache(tmp_path, NOISY),
                lambda: load_split(tmp_path, NOISY, "val")):
        with pytest.raises(CacheError, match=fragment + r".*delete the folder \(rm -r .*"
                           r"synthetic-noise0.5-rows3000\)"):
            use()
    assert _mtimes(path.parent) == before  # never silently regenerated or reused


def test_the_plain_synthetic_cache_is_unaffected_by_variants(tmp_path):
    """Same folder, manifest and content hash as before variants existed; a variant with the
    same options draws the same rows but is a data set of its own (another data hash)."""
    preprocess_synthetic(tmp_path, rows=3000, progress=False)
    plain = tmp_path / "synthetic"
    manifest_bytes = (plain / MANIFEST).read_bytes()
    m = open_cache(tmp_path, "synthetic")
    assert m["dataset"] == "synthetic"
    assert set(m["params"]) == {"generator_version", "rows", "test_rows", "seed", "click_rate",
                                "conversion_rate", "noise_rate", "realised_train",
                                "realised_test", "calibrated"}
    ensure_generated(tmp_path, "synthetic", progress=False)  # the user's cache: kept
    ensure_generated(tmp_path, "synthetic[rows=3000]", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic", "synthetic-rows3000"]
    assert (plain / MANIFEST).read_bytes() == manifest_bytes
    same = open_cache(tmp_path, "synthetic[rows=3000]")
    for split in ("train", "val", "test"):
        assert same["splits"][split]["sha256"] == m["splits"][split]["sha256"]
    assert data_hash(plain) == data_hash(tmp_path, "synthetic") == m.data_sha256
    assert same.data_sha256 != m.data_sha256


def test_preprocess_builds_a_variant_and_refuses_generator_flags_for_it(tmp_path):
    m = preprocess("synthetic[rows=3000,noise=0.5]", tmp_path, progress=False, rows=None)
    assert m["dataset"] == NOISY and (tmp_path / "synthetic-noise0.5-rows3000").is_dir()
    with pytest.raises(ConfigError, match=r"--rows: the variant synthetic\[noise=0.5,rows=3000\] "
                                          r"takes its generator options from its name"):
        preprocess(NOISY, tmp_path, progress=False, rows=5000)
    with pytest.raises(ConfigError, match="takes its options from its name"):
        preprocess_synthetic(tmp_path, rows=5000, noise_rate=0.5, progress=False,
                             dataset="synthetic[noise=0.5]")


def test_preprocess_a_variant_from_the_command_line(tmp_path):
    r = CliRunner().invoke(app, ["preprocess", CLEAN, "--data-dir", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    assert open_cache(tmp_path, CLEAN)["dataset"] == CLEAN
    r = CliRunner().invoke(app, ["preprocess", "synthetic[noise=3]", "--data-dir",
                                 str(tmp_path), "-q"])
    assert r.exit_code == 1 and "--noise-rate must be in [0, 1)" in r.output


@pytest.mark.slow
def test_train_a_variant_from_the_command_line(tmp_path):
    """3,000 rows: a validation split of ~200 rows, so clicks and conversions are made common
    enough for both validation AUCs to exist."""
    d, out = tmp_path / "d", tmp_path / "r"
    spelled = "synthetic[rows=3000,noise=0.5,click=0.2,conversion=0.4]"
    r = CliRunner().invoke(app, ["train", "--dataset", spelled,
                                 "--model", "mmoe", "--loss", "bce", "--epochs", "1",
                                 "--threads", "1", "--data-dir", str(d), "--out", str(out),
                                 "-q"])
    assert r.exit_code == 0, r.output
    assert "ctr_auc" in r.output
    canonical = "synthetic[click=0.2,conversion=0.4,noise=0.5,rows=3000]"
    assert sorted(p.name for p in d.iterdir()) == [
        "synthetic-click0.2-conversion0.4-noise0.5-rows3000"]
    (run,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == canonical
    record = json.loads((run / "run.json").read_text())
    assert record["data_sha256"] == data_hash(d, canonical)


# ------------------------------------------------------------------ sizes that cannot fit
def test_a_synthetic_size_beyond_the_machine_is_refused_at_once_with_the_memory(tmp_path):
    with pytest.raises(ConfigError) as e:
        v.check_rows_fit(40_000_000, memory=24e9)
    assert "would need about 32.6 GB of memory" in str(e.value)
    assert "above the 24.0 GB this machine has" in str(e.value)
    assert "use at most 29,419,753 rows here" in str(e.value)
    v.check_rows_fit(1_000_000, memory=24e9)  # fits
    with pytest.raises(ConfigError, match="the bound is 100,000,000 rows"):
        v.check_rows_fit(10**10, memory=1e15)
    # through a spec, the CLI and a sweep flag: refused before anything is generated
    r = CliRunner().invoke(app, ["preprocess", "synthetic[rows=1e10]", "--data-dir",
                                 str(tmp_path / "d")])
    text = " ".join(r.output.split())
    assert r.exit_code != 0 and "--rows 10,000,000,000 is too large" in text
    assert "Traceback" not in r.output and not (tmp_path / "d").exists()
    r = CliRunner().invoke(app, ["compare", "--rows", "1000,1e10", "--data-dir",
                                 str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "is too large" in r.output and not (tmp_path / "o").exists()
