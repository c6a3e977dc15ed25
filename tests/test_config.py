"""Configuration: defaults < YAML < flags, validation messages, run ids."""

import re
from pathlib import Path

import pytest

from prlbench.config import RunConfig, resolve, run_id
from prlbench.errors import ConfigError
from prlbench.registry import Registry, UnknownNameError


def test_flags_win_over_file_and_file_over_defaults(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 3, lr: 0.01}\nmodel: {name: ple}\n")
    cfg = resolve(f, {"train": {"epochs": 5, "lr": None}, "model": {"name": None}})
    assert cfg.train.epochs == 5  # flag
    assert cfg.train.lr == 0.01  # file
    assert cfg.model.name == "ple"  # file
    assert cfg.train.batch_size == RunConfig().train.batch_size  # default
    assert cfg.model.preset == "small"  # synthetic's default preset, filled in


def test_loss_defaults_are_filled_so_the_config_says_what_ran():
    cfg = resolve(None, {"loss": {"name": "pwiser", "params": {"lam": 0.25}}})
    assert cfg.loss.params["lam"] == 0.25
    assert {"m1", "m2", "phi", "score", "head"} <= set(cfg.loss.params)


@pytest.mark.parametrize("flags, fragment", [
    ({"loss": {"name": "pwiser", "params": {"lam": -1.0}}},
     "loss.params.lam (--lambda) must be a finite number >= 0"),
    ({"loss": {"name": "bce", "params": {"lam": 1.0}}}, "has no parameter 'lam'"),
    ({"loss": {"name": "pwiser", "params": {"lam": "abc"}}},
     "loss.params.lam (--lambda) must be a finite number"),
    ({"loss": {"name": "pwiser", "params": {"m1": [1]}}},
     "loss.params.m1 (--m1) must be a finite number"),
    ({"loss": {"name": "pwiser", "params": {"phi": "cube"}}},
     "loss.params.phi (--phi) must be one of"),
    ({"model": {"overrides": {"bogus": 1}}}, "has no option 'bogus'; valid options: embed_dim"),
    ({"model": {"name": "ple", "overrides": {"num_experts": 4}}}, "has no option 'num_experts'"),
    ({"model": {"overrides": {"num_experts": 0}}}, "num_experts=0: expected a positive integer"),
    ({"model": {"name": "nope"}}, "valid models"),
    ({"loss": {"name": "focal"}}, "valid losses"),
    ({"data": {"dataset": "movielens"}}, "aliexpress_nl"),
    ({"train": {"epochs": 0}}, "--epochs"),
    ({"train": {"precision": "fp8"}}, "--precision"),
    ({"train": {"device": "gpu"}}, "train.device (--device) must be cpu, cuda or cuda:N"),
    ({"train": {"device": "cuda:x"}}, "--device) must be cpu, cuda or cuda:N"),
    ({"train": {"lr": float("inf")}}, "train.lr (--lr) must be a finite number > 0, got inf"),
    ({"train": {"lr": float("nan")}}, "train.lr (--lr) must be a finite number > 0, got nan"),
    ({"train": {"weight_decay": float("inf")}},
     "train.weight_decay must be a finite number >= 0, got inf"),
    ({"train": {"checkpoint_every_s": float("inf")}}, "train.checkpoint_every_s must be a finite"),
    ({"train": {"seed": -1}}, "train.seed (--seed) must be >= 0 and < 2**63, got -1"),
])
def test_bad_values_name_the_option(flags, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        resolve(None, flags)


def test_yaml_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        resolve(bad, {})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train: {epoch: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        resolve(unknown, {})


@pytest.mark.parametrize("yaml_train, fragment", [
    ('epochs: "ten"', "train.epochs: expected a whole number, got 'ten'"),
    ("epochs: 1.5", "train.epochs: expected a whole number, got 1.5"),
    ("epochs: true", "train.epochs: expected a whole number, got True"),
    ("batch_size: 1.5", "train.batch_size: expected a whole number"),
    ("lr: fast", "train.lr: expected a number, got 'fast'"),
    ("init_bias: 1", "train.init_bias: expected true or false"),
    ("precision: 16", "train.precision: expected a name"),
])
def test_yaml_types_are_checked_and_name_the_key(tmp_path: Path, yaml_train, fragment):
    f = tmp_path / "run.yaml"
    f.write_text(f"train: {{{yaml_train}}}\n")
    with pytest.raises(ConfigError, match=rf"run\.yaml\.{fragment}"):
        resolve(f, {})


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path: Path):
    f = tmp_path / "run.yaml"
    f.write_text("train: {lr: 1e-3, weight_decay: 0}\nmodel: {overrides: {embed_dim: 8}}\n")
    cfg = resolve(f, {})  # YAML 1.1 reads 1e-3 as the text '1e-3'
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.weight_decay, float)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {overrides: [embed_dim]}\n")
    with pytest.raises(ConfigError, match="model.overrides: expected a mapping"):
        resolve(bad, {})


def test_run_id_is_stable_and_ignores_device_and_threads():
    a = resolve(None, {"train": {"seed": 3}})
    b = resolve(None, {"train": {"seed": 3, "threads": 2, "device": "cpu"}})
    c = resolve(None, {"train": {"seed": 4}})
    assert run_id(a, "m") == run_id(b, "m")
    assert run_id(a, "m") != run_id(c, "m")
    assert run_id(a, "m") != run_id(a, "other-data")
    assert run_id(a, "m").startswith("synthetic-mmoe-bce-s3-")


def test_the_models_computation_is_part_of_a_runs_identity(monkeypatch):
    from prlbench.models import MODELS
    from prlbench.models.layers import COMPUTATION

    cfg = resolve(None, {"model": {"name": "ple"}})
    assert cfg.identity()["model"]["computation"] == COMPUTATION > 1
    before = run_id(cfg, "m")
    monkeypatch.setattr(MODELS.get("ple"), "computation", 1)  # prlbench 0.3's computation
    assert "computation" not in cfg.identity()["model"] and run_id(cfg, "m") != before


def test_a_step_budget_is_a_run_of_its_own_and_none_keeps_the_id():
    plain = resolve(None, {})
    assert "max_steps" not in plain.identity()["train"]  # 0, the default: earlier ids kept
    cut = resolve(None, {"train": {"max_steps": 300}})
    assert cut.identity()["train"]["max_steps"] == 300 and run_id(cut, "m") != run_id(plain, "m")


def test_an_evaluation_batch_size_other_than_the_default_is_a_run_of_its_own():
    # scores can differ in their last bits with the rows a GEMM takes at once
    plain = resolve(None, {})
    assert "eval_batch_size" not in plain.identity()["train"]
    other = resolve(None, {"train": {"eval_batch_size": 16384}})
    assert run_id(other, "m") != run_id(plain, "m")


def test_round_trip_through_dict():
    cfg = resolve(None, {"loss": {"name": "pwiser"}, "train": {"seed": 7}})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_registry_lists_valid_names():
    r: Registry[int] = Registry("widget")
    r.register("a")(1)
    r.register("b")(2)
    assert r.resolve("all") == ["a", "b"]
    with pytest.raises(UnknownNameError, match="valid widgets: a, b"):
        r.resolve("a,c")
    with pytest.raises(ValueError):
        r.register("a")(3)


# ------------------------------------------------------------- hostile or broken files
def _alias_bomb(levels: int) -> str:
    """Billion laughs: each anchor repeats the one before nine times (9**levels leaves once
    expanded), defined where any key is taken (model.overrides) and used in a typed key."""
    lines = ["model:", "  overrides:", "    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ntrain:\n  lr: *a{levels - 1}\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path):
    """An alias bomb in a typed key once cost minutes and gigabytes (its repr in the message)."""
    import time

    f = tmp_path / "bomb.yaml"
    f.write_text(_alias_bomb(6))  # 9**6 = half a million leaves once expanded
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        resolve(f, {})
    assert time.perf_counter() - t0 < 5
    message = str(e.value)
    assert message.startswith(f"--config {f}:"), message[:300]
    assert "alias" in message.removeprefix(f"--config {f}:") and len(message) < 300, message[:300]


def test_long_values_are_cut_short_in_config_errors(tmp_path: Path):
    f = tmp_path / "long.yaml"
    f.write_text("train:\n  lr: [" + ", ".join(["123456789"] * 5000) + "]\n")
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got \[") as e:
        resolve(f, {})
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


@pytest.mark.parametrize("content, fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a UTF-8 text file"),
    (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
    (b"train: {epochs: 3\n", "not valid YAML"),
])
def test_unreadable_config_files_are_one_line_naming_the_file(tmp_path: Path, content,
                                                               fragment):
    f = tmp_path / "odd.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(fragment)) as e:
        resolve(f, {})
    assert str(e.value).startswith(f"--config {f}:") and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("seed", [2**63, 2**64 + 1, 10**30])
def test_a_seed_beyond_what_torch_and_the_tables_hold_is_refused(seed):
    with pytest.raises(ConfigError, match=re.escape("train.seed (--seed) must be >= 0 and < "
                                                    "2**63")):
        resolve(None, {"train": {"seed": seed}})
    assert resolve(None, {"train": {"seed": 2**63 - 1}}).train.seed == 2**63 - 1


@pytest.mark.parametrize("text, fragment", [
    ("1000000000", "at most 1000 seeds"),
    ("1" + "0" * 5000, "--seeds: expected a count"),
    (",".join(str(i) for i in range(1, 1100)), "at most 1000 seeds"),
    (f"1,{2**63}", "each below 2**63"),
    (str(2**63), "at most 1000 seeds"),
    ("", "--seeds is empty"),
    (" , ", "--seeds is empty"),
])
def test_seed_counts_and_values_are_bounded_before_any_work(text, fragment):
    import time

    from prlbench.experiment.grid import parse_seeds

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_seeds(text)
    assert time.perf_counter() - t0 < 1
    assert parse_seeds("1000") == tuple(range(1, 1001))


# ------------------------------------------------------------------------ empty grid
@pytest.mark.parametrize("flag", ["models", "datasets", "losses", "seeds"])
@pytest.mark.parametrize("value", ["", " ", ","])
def test_an_empty_grid_flag_is_an_error_naming_it(flag, value):
    from prlbench.experiment.grid import CompareConfig

    with pytest.raises(ConfigError, match=rf"^--{flag} is empty"):
        CompareConfig.resolve(None, {flag: value})


@pytest.mark.parametrize("axis", ["datasets", "models", "losses", "seeds"])
def test_a_grid_with_an_empty_axis_fails_its_check(axis):
    from dataclasses import replace

    from prlbench.experiment.grid import CompareConfig

    grid = CompareConfig.resolve(None, {"seeds": "2"}).grid
    with pytest.raises(ConfigError, match=rf"--{axis} is empty"):
        replace(grid, **{axis: ()}).check()
