"""Loss settings in the grid: every loss parameter as a flag (one value or candidates), loss
specs such as `pwiser[norm=paper]` as arms of their own, and run ids that survive a parameter
added later."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prlbench.cli import app
from prlbench.config import resolve, run_id
from prlbench.errors import ConfigError
from prlbench.experiment.compare import _select
from prlbench.experiment.executors import RunResult  # noqa: F401  (the outcome type, for reading)
from prlbench.experiment.grid import CompareConfig, parse_losses, split_loss
from prlbench.losses import LOSSES, all_params, loss_params

CLI_TRAIN = ["--epochs", "1", "--batch-size", "1024", "--preset", "small", "--jobs", "1",
             "--threads", "1", "-q"]


def resolved(**flags) -> CompareConfig:
    return CompareConfig.resolve(None, {"datasets": "synthetic", "models": "mmoe", **flags})


# ---------------------------------------------------------------------------- loss specs
def test_specs_are_parsed_checked_and_written_canonically():
    specs = parse_losses("bce, pwiser,pwiser[norm=paper],ranknet[lam=0.42857142857142855,"
                         "head=both],listce[alpha=0.9]")
    assert specs == ("bce", "pwiser", "pwiser[norm=paper]",
                     "ranknet[head=both,lam=0.42857142857142855]", "listce[alpha=0.9]")
    assert split_loss(specs[3]) == ("ranknet", {"head": "both", "lam": 3 / 7})  # no rounding
    assert parse_losses("pwiser[norm=paper],pwiser[ norm = paper ]") == ("pwiser[norm=paper]",)
    assert parse_losses("all") == tuple(LOSSES.names())


@pytest.mark.parametrize("text,fragment", [
    ("bce,pwiser[norm=sideways]", "must be one of pairs, paper"),
    ("bce,pwiser[gamma=1]", "its parameters: lam, m1, m2"),
    ("bce,pwiser[lam=-1]", "finite number >= 0"),
    ("bce,pwiser[lam]", "is not key=value"),
    ("bce,pwiser[lam=1,lam=2]", "given twice"),
    ("bce,pwiser[norm=paper", "unbalanced brackets"),
    ("bce,pwiser]", "unbalanced brackets"),
    ("bce,pwiser[]", "name[key=value,...]"),
    ("bce,pwiser[lam=abc]", "lam must be a number"),
    ("bce,listce[alpha=2]", "<= 1"),
    ("bce,graded[temperature=0]", "> 0"),
])
def test_bad_specs_are_refused_with_the_fix(text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_losses(text)


def test_a_spec_fixes_its_settings_and_the_flags_fill_the_rest():
    cc = resolved(losses="bce,pwiser,pwiser[norm=paper]", lam="0.1,1", norm="pairs")
    grid = cc.grid
    assert grid.losses == ("bce", "pwiser", "pwiser[norm=paper]")
    assert grid.candidates("pwiser") == [{"lam": 0.1, "norm": "pairs"},
                                         {"lam": 1.0, "norm": "pairs"}]
    assert grid.candidates("pwiser[norm=paper]") == [{"lam": 0.1, "norm": "paper"},
                                                     {"lam": 1.0, "norm": "paper"}]
    cfg = grid.config("synthetic", "mmoe", "pwiser[norm=paper]", 1, {"lam": 1.0, "norm": "paper"})
    assert cfg.loss.name == "pwiser" and cfg.loss.params["norm"] == "paper"
    # every candidate of the two tuned arms on the tuning seeds 1001, 1002; all arms on 1..8
    assert grid.tune_seeds == (1001, 1002)
    assert grid.size() == (2 + 2) * 2 + 3 * 8
    # the selection is reported per loss: both pwiser arms chose lambda from {0.1, 1}
    assert grid.selection() == {"seeds": [1001, 1002], "train": {},
                                "losses": {"pwiser": {"lam": [0.1, 1.0]}},
                                "budget": {"pwiser": 2, "pwiser[norm=paper]": 2}}


def test_two_specs_that_are_the_same_runs_are_refused():
    with pytest.raises(ConfigError, match=r"pwiser and pwiser\[norm=pairs\] give the same runs"):
        resolved(losses="bce,pwiser,pwiser[norm=pairs]")
    with pytest.raises(ConfigError, match="give the same runs"):
        resolved(losses="bce,ranknet[head=both],ranknet", head="both")


def test_selection_takes_the_best_mean_over_the_tuning_seeds():
    class Found:
        def __init__(self, s):
            self.best_val_score = s

    cands = [{"lam": 0.1}, {"lam": 1.0}, {"lam": 2.0}]
    # candidate 0 wins seed 1001 but loses on the mean; candidate 2 failed on one seed
    tried = [(0, Found(0.80)), (0, Found(0.60)), (1, Found(0.75)), (1, Found(0.74)),
             (2, Found(0.99)), (2, Found(None))]
    assert _select(cands, tried) == 1
    assert _select(cands, [(j, Found(None)) for j in range(3)]) == 0  # none complete: first
    assert _select(cands[:1], []) == 0
    # equal means: the first candidate, whatever order the runs came back in
    assert _select(cands[:2], [(1, Found(0.7)), (0, Found(0.7))]) == 0


# ---------------------------------------------------------------------- parameter flags
def test_every_loss_parameter_has_a_train_and_a_compare_flag():
    runner = CliRunner()
    train_help = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    compare_help = runner.invoke(app, ["compare", "--help"], terminal_width=200).output
    for key, spec in all_params().items():
        assert spec.flag in train_help, (key, spec.flag)
        assert spec.flag in compare_help, (key, spec.flag)


@pytest.mark.parametrize("flag,text,expected", [
    ("norm", "pairs,paper", ["pairs", "paper"]),
    ("head", "ctr,both,ctr", ["ctr", "both"]),
    ("temperature", "0.5,2", [0.5, 2.0]),
    ("alpha", "0.8", [0.8]),
])
def test_every_parameter_takes_a_value_or_candidates(flag, text, expected):
    losses = "bce,pwiser,graded,ranknet,listce"
    assert resolved(losses=losses, **{flag: text}).grid.loss_grid == {flag: expected}


@pytest.mark.parametrize("flags,fragment", [
    (dict(losses="bce,pwiser", alpha="0.8"), "--alpha: none of the losses bce, pwiser takes it"
                                             " (it is a parameter of listce)"),
    (dict(losses="bce,graded", norm="paper"), "--norm: none of the losses"),
    (dict(losses="bce,pwiser", norm="pairs,sideways"), "must be one of pairs, paper"),
    (dict(losses="bce,graded", temperature="1,0"), "> 0"),
    (dict(losses="bce,listce", alpha="0.5,abc"), "--alpha: expected a number"),
    (dict(losses="bce,pwiser", norm=","), "--norm is empty"),
])
def test_bad_parameter_flags_fail_before_training(flags, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        resolved(**flags)


# --------------------------------------------------------------------- run identity
def _cfg(loss: str, **params):
    return resolve(None, {"loss": {"name": loss, "params": params}})


@pytest.mark.parametrize("loss,key,other", [("pwiser", "norm", "paper"),
                                            ("ranknet", "head", "both")])
def test_a_parameter_added_later_keeps_earlier_run_ids(loss, key, other):
    default = loss_params(loss)[key]
    implicit, explicit = _cfg(loss), _cfg(loss, **{key: default})
    assert implicit.loss.params[key] == default  # the stored config says what ran
    assert key not in implicit.identity()["loss"]["params"]
    assert run_id(implicit, "sha") == run_id(explicit, "sha")
    # the id prlbench 0.2 gave the same run: the identity without the parameter at all
    older = implicit.identity()
    assert json.dumps(older, sort_keys=True) == json.dumps(explicit.identity(), sort_keys=True)
    changed = _cfg(loss, **{key: other})
    assert changed.identity()["loss"]["params"][key] == other
    assert run_id(changed, "sha") != run_id(implicit, "sha")


def test_parameters_present_from_the_start_stay_in_the_identity():
    assert _cfg("pwiser").identity()["loss"]["params"]["lam"] == 0.5


# ------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_compare_puts_two_readings_of_pwiser_in_one_table(data_dir, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["compare", "--datasets", "synthetic", "--data-dir",
                                 str(data_dir), "--out", str(out), "--models", "shared_bottom",
                                 "--losses", "bce,pwiser,pwiser[norm=paper]", "--seeds", "2",
                                 "--format", "md", *CLI_TRAIN], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    runs = json.loads((out / "compare.json").read_text())["runs"]
    params = [json.loads((Path(e["run_dir"]) / "config.json").read_text())["loss"]["params"]
              for e in runs if e["loss"] == "pwiser"]
    assert sorted(p["norm"] for p in params) == ["pairs", "pairs", "paper", "paper"]
    table = (out / "tables" / "auc.md").read_text()
    assert "PWiseR (norm=pairs)" in table and "PWiseR (norm=paper)" in table
    # the caption names both readings' settings
    assert "reading=paper" in table or "norm=paper" in table


def test_train_takes_every_new_parameter_and_refuses_a_foreign_one(data_dir, tmp_path):
    runner = CliRunner()
    common = ["train", "--dataset", "synthetic", "--data-dir", str(data_dir), "--model",
              "shared_bottom", "--epochs", "1", "--batch-size", "1024", "--preset", "small",
              "-q", "--out", str(tmp_path)]
    r = runner.invoke(app, [*common, "--loss", "graded", "--temperature", "2", "--lambda",
                            "0.3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    cfg = json.loads((run / "config.json").read_text())["loss"]
    assert cfg == {"name": "graded", "params": {"lam": 0.3, "temperature": 2.0}}
    r = runner.invoke(app, [*common, "--loss", "bce", "--alpha", "0.5"])
    assert r.exit_code != 0
    text = " ".join(r.output.split())
    assert "loss 'bce' has no parameter 'alpha'" in text
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]) == 1


def test_a_compare_config_file_takes_every_new_parameter(tmp_path):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("loss:\n  params:\n    norm: [pairs, paper]\n    alpha: 0.8\n"
                   "    temperature: [0.5, 1.0]\n")
    cc = CompareConfig.resolve(cfg, {"datasets": "synthetic", "models": "mmoe",
                                     "losses": "bce,pwiser,graded,listce", "alpha": "0.7"})
    # the flag wins over the file for alpha; the file's lists are candidates
    assert cc.grid.loss_grid == {"alpha": [0.7], "norm": ["pairs", "paper"],
                                 "temperature": [0.5, 1.0]}
    assert cc.grid.candidates("listce") == [{"alpha": 0.7}]
    assert len(cc.grid.candidates("pwiser")) == 2 and len(cc.grid.candidates("graded")) == 2
    cfg.write_text("loss:\n  params:\n    norm: [pairs, sideways]\n")
    with pytest.raises(ConfigError, match="must be one of pairs, paper"):
        CompareConfig.resolve(cfg, {"datasets": "synthetic", "models": "mmoe",
                                    "losses": "bce,pwiser"})
