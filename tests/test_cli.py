"""The command line, in-process (CliRunner) except where import costs are measured."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prlbench.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_imports_neither_torch_nor_pandas():
    code = ("import sys; from typer.testing import CliRunner; from prlbench.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'pandas', 'pyarrow', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["download", "preprocess", "train", "evaluate", "compare",
                                     "ls"])
def test_every_command_has_help_with_an_example(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    assert "Example" in r.output or command == "ls" and "prlbench ls" in r.output


def test_preprocess_help_states_the_real_defaults():
    import inspect
    import re

    from prlbench.data import csvio
    from prlbench.data.synthetic import preprocess_synthetic

    text = " ".join(CliRunner().invoke(app, ["preprocess", "--help"], env={"COLUMNS": "250"})
                    .output.split())
    defaults = {k: p.default for k, p in inspect.signature(preprocess_synthetic).parameters.items()
                if k in ("rows", "seed", "click_rate", "conversion_rate", "noise_rate")}
    defaults["max_unmatched"] = csvio.MAX_UNMATCHED
    for name, value in defaults.items():
        flag = "--" + name.replace("_", "-")
        stated = re.search(rf"│ {flag} [^│]*?\(default ([0-9.]+)\)", text)
        assert stated and float(stated.group(1)) == value, (flag, value)
    assert "<bool>" not in text.split("--help")[0]  # flags take no value


def test_ls_lists_every_registered_name():
    r = invoke("ls", "datasets")
    for name in ("aliexpress_nl", "aliexpress_es", "aliexpress_fr", "aliexpress_us", "aliccp",
                 "synthetic"):
        assert name in r.output
    r = invoke("ls", "models")
    for name in ("single_task", "shared_bottom", "esmm", "omoe", "mmoe", "ple", "aitm",
                 "metaheac"):
        assert name in r.output
    r = invoke("ls", "losses")
    for name in ("bce", "pwiser", "ranknet"):
        assert name in r.output
    r = invoke("ls", "widgets")
    assert r.exit_code == 1 and "datasets, models, losses" in r.output


def test_download_without_url_says_where_to_get_the_files(tmp_path: Path):
    r = invoke("download", "aliexpress_nl", "--data-dir", str(tmp_path))
    assert r.exit_code != 0
    assert "tianchi.aliyun.com/dataset/74690" in r.output
    assert "aliexpress_NL_datasets.zip" in r.output
    assert "prlbench preprocess aliexpress_nl" in r.output


@pytest.mark.parametrize("args, fragment", [
    (["--model", "transformer"], "valid models"),
    (["--loss", "focal"], "valid losses"),
    (["--loss", "pwiser", "--lambda", "-0.5"], "(--lambda) must be a finite number >= 0"),
    (["--dataset", "aliexpress_nl"], "prlbench preprocess aliexpress_nl"),
])
def test_train_rejects_bad_flags_with_the_fix(tmp_path: Path, args, fragment):
    r = invoke("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"), *args)
    assert r.exit_code == 1
    assert fragment in " ".join(r.output.split())


def test_preprocess_rejects_options_that_do_not_apply(tmp_path: Path):
    r = invoke("preprocess", "aliccp", "--rows", "10", "--data-dir", str(tmp_path))
    assert r.exit_code == 1 and "--rows applies only to the synthetic" in r.output


@pytest.mark.slow
def test_preprocess_and_train_synthetic_from_the_command_line(tmp_path: Path):
    d, out = str(tmp_path / "d"), str(tmp_path / "r")
    r = invoke("preprocess", "synthetic", "--rows", "4000", "--data-dir", d, "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "synthetic" / "manifest.json").exists()
    r = invoke("train", "--model", "shared_bottom", "--loss", "pwiser", "--epochs", "1",
               "--threads", "1", "--data-dir", d, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "ctr_auc" in r.output
    run = next((tmp_path / "r" / "runs").iterdir())
    r = invoke("evaluate", str(run), "--data-dir", d)
    assert r.exit_code == 0 and "ctcvr_auc" in r.output


def test_os_errors_are_one_line_not_a_traceback(tmp_path):
    """A --data-dir that is a file (or a full disk) is named in one line, exit 1."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = runner.invoke(app, ["preprocess", "synthetic", "--rows", "1000", "-q",
                            "--data-dir", str(blocker)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and str(blocker) in r.output
    assert r.output.startswith("error:") and "rerun the same command" in r.output


def test_progress_bars_go_to_stderr_not_stdout(tmp_path):
    """`prlbench ... > file` keeps only results in the file: the bars are on stderr."""
    src = tmp_path / "sample_skeleton_train.csv"
    src.write_text("1,0,0,abc,2,x\n")
    out = subprocess.run([sys.executable, "-m", "prlbench", "download", "aliccp", "--from",
                          str(src), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "import sample_skeleton_train.csv" in out.stderr
    assert "━" not in out.stdout


@pytest.mark.parametrize("command", ["train", "compare"])
def test_train_and_compare_help_state_the_real_defaults(command):
    import re

    from prlbench.config import TrainConfig
    from prlbench.losses import loss_params

    text = " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
                    .output.split())
    pw, rn, t = loss_params("pwiser"), loss_params("ranknet"), TrainConfig()

    def stated(flag: str) -> str:
        m = re.search(rf"│ {flag} [^│]*?default ([^)]+?)\)", text)
        assert m, flag
        return m.group(1)

    assert float(stated("--lambda")) == pw["lam"] == rn["lam"]
    assert float(stated("--m1")) == pw["m1"] and float(stated("--m2")) == pw["m2"]
    assert int(stated("--epochs")) == t.epochs and int(stated("--batch-size")) == t.batch_size
    assert int(stated("--patience")) == t.patience
    assert re.search(rf"{pw['phi']} \(default\)", text) and re.search(rf"{pw['head']} \(default\)",
                                                                     text)
    assert f"{pw['score']} for pwiser" in text or f"pwiser (default {pw['score']})" in text
    assert f"{rn['score']} for ranknet" in text or f"ranknet (default {rn['score']})" in text


# ------------------------------------------------------------ nothing lost on bad input
def _record_of_an_earlier_compare(out: Path) -> dict:
    """compare.json and a table, as an earlier compare left them: path -> bytes."""
    (out / "tables").mkdir(parents=True)
    (out / "compare.json").write_text('{"models": ["mmoe"], "runs": []}')
    (out / "tables" / "auc.md").write_text("| the earlier table |")
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flag", ["--models", "--datasets", "--losses", "--seeds"])
def test_compare_with_an_empty_grid_flag_fails_and_keeps_the_earlier_record(tmp_path, flag):
    """`--models "$MODELS"` with MODELS unset: once exit 0, the report deleted and compare.json
    replaced by an empty grid."""
    out = tmp_path / "cmp"
    before = _record_of_an_earlier_compare(out)
    r = invoke("compare", "--data-dir", str(tmp_path / "d"), "--out", str(out), "--seeds", "2",
               flag, "", "-q")
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and f"{flag} is empty" in text, text
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("seed", [str(2**64 + 1), str(2**63)])
def test_train_with_a_seed_beyond_2_63_is_one_line_and_writes_nothing(tmp_path, seed):
    out = tmp_path / "r"
    r = invoke("train", "--data-dir", str(tmp_path / "d"), "--out", str(out), "--seed", seed)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "--seed) must be >= 0 and < 2**63" in r.output
    assert not out.exists() and not (tmp_path / "d").exists()


def test_a_binary_config_file_is_one_line_naming_it(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(bytes(range(256)) * 4)
    for command in ("train", "compare"):
        r = invoke(command, "--data-dir", str(tmp_path / "d"), "--config", str(f))
        text = " ".join(r.output.split())
        assert r.exit_code == 1 and f"--config {f}: not a UTF-8 text file" in text, text


def test_a_variant_run_folder_is_printed_as_it_is_and_evaluate_takes_it(tmp_path):
    """`synthetic[noise=0.5]`: brackets, = and , in a folder name are printed literally (rich
    markup is never applied to a name), so the printed path can be pasted into evaluate."""
    import re

    data, out = tmp_path / "data", tmp_path / "results"
    r = invoke("train", "--dataset", "synthetic[noise=0.5,rows=20000]", "--epochs", "1",
               "--data-dir", str(data), "--out", str(out))
    assert r.exit_code == 0, r.output
    printed = re.search(r"run folder: (.*)$", r.output, re.M).group(1).strip()
    assert "synthetic[noise=0.5,rows=20000]-mmoe-bce-s1-" in printed and Path(printed).is_dir()
    assert "metrics of synthetic[noise=0.5,rows=20000]-" in " ".join(r.output.split())
    again = invoke("evaluate", printed, "-q")
    assert again.exit_code == 0, again.output
    assert "ctr_auc" in again.output and "run folder" not in again.output  # -q: metrics alone
    seeds = invoke("train", "--dataset", "synthetic[noise=0.5,rows=20000]", "--epochs", "1",
                   "--seeds", "2", "--data-dir", str(data), "--out", str(out))
    assert seeds.exit_code == 0, seeds.output
    assert "training 2 seeds (1, 2) one after another" in seeds.output  # says what will happen
    # the table folds long names over lines, but never drops the bracketed part as markup
    assert "synthetic[noise=0.5" in seeds.output


def test_device_cuda_without_a_gpu_fails_before_anything_is_made(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for args in (["train"], ["compare", "--seeds", "2"]):
        r = invoke(*args, "--device", "cuda", "--data-dir", str(tmp_path / "data"),
                   "--out", str(tmp_path / "out"))
        assert r.exit_code == 1 and "--device cuda" in r.output, r.output
        assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists(), args


@pytest.mark.parametrize("content, key", [("train: {lr: -1}", "train.lr"),
                                          ("train: {epochs: 0}", "train.epochs"),
                                          ("loss: {name: pwiser, params: {lam: -2}}",
                                           "loss.params.lam")])
def test_a_value_out_of_range_in_a_config_file_names_the_file(tmp_path, content, key):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(content + "\n")
    r = invoke("train", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert r.exit_code == 1
    assert f"{cfg}: " in r.output and key in r.output, r.output
    if key == "train.epochs":  # the flag wins: then the flag is named, not the file
        r = invoke("train", "--config", str(cfg), "--epochs", "-3", "--data-dir",
                   str(tmp_path / "d"))
        assert "-3" in r.output and str(cfg) not in r.output


def test_compare_names_every_data_set_that_is_not_preprocessed(tmp_path):
    r = invoke("compare", "--datasets", "aliexpress_nl,aliccp", "--data-dir",
               str(tmp_path / "d"), "--out", str(tmp_path / "o"), "-q")
    assert r.exit_code == 1
    text = " ".join(r.output.split())
    assert "2 data sets are not preprocessed" in text and "aliexpress_nl, aliccp" in text
    assert "prlbench preprocess aliccp" in text
