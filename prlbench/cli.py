"""The `prlbench` command: a thin skin over the library. Each command parses its options, calls
one library function and prints; what a command means lives in the library. Options shared by
several commands are declared once, below. Heavy imports (torch, pandas, pyarrow) happen inside
the commands, so `prlbench --help` stays instant."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from prlbench import __version__
from prlbench.data.variants import KNOBS, knob_help
from prlbench.errors import ConfigError, Interrupted, PrlbenchError
from prlbench.experiment.grid import DEFAULTS as GRID_DEFAULTS
from prlbench.signals import cli_signals

app = typer.Typer(
    name="prlbench",
    help="Does a pairwise ranking loss (PWiseR) really help multi-task recommenders? "
    "Download or generate data, train models with BCE / PWiseR / RankNet, compare with honest "
    "statistics.\n\nQuick start:  prlbench compare",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)

# ------------------------------------------------------------------ shared options, once
DataDir = Annotated[Path, typer.Option(
    "--data-dir", envvar="PRLBENCH_DATA_DIR",
    help="The Parquet cache of data sets. Env: PRLBENCH_DATA_DIR.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bars.")]
Dataset = Annotated[str, typer.Argument(help="A data set name (prlbench ls datasets).")]
# Loss options: train takes one value, compare one value or a list of candidates (a string).
LOSS_HELP = {
    "lam": "Weight of the ranking term (pwiser, graded, ranknet; default 0.5).",
    "m1": "PWiseR margin, conversion vs click-only (default 0.05).",
    "m2": "PWiseR margin, conversion vs non-click (default 0.1).",
    "phi": "PWiseR phi: squared_hinge (default), hinge, logistic.",
    "score": "prob or logit (default: prob for pwiser, logit for ranknet).",
    "head": "Head the pairwise term ranks (pwiser, ranknet): ctr (default), ctcvr or both.",
    "norm": "PWiseR's reading: pairs (default: mean over each term's pairs) or paper (sum over "
            "conversions, mean over the other group).",
    "temperature": "Graded: temperature T > 0 dividing the logit differences (default 1).",
    "alpha": "ListCE: weight of BCE in [0, 1], the list term gets 1 - alpha (default 0.9).",
}
LIST_HELP = " A comma-separated list is chosen on validation."


def _loss_option(key: str, kind: type, *decls: str, listed: bool = False):
    return Annotated[Optional[kind], typer.Option(  # type: ignore[valid-type]
        *decls, help=LOSS_HELP[key] + (LIST_HELP if listed else ""))]


Lambda, M1, M2 = (_loss_option("lam", float, "--lambda"), _loss_option("m1", float),
                  _loss_option("m2", float))
Temperature, Alpha = _loss_option("temperature", float), _loss_option("alpha", float)
Phi, Score, Head, Norm = (_loss_option(k, str) for k in ("phi", "score", "head", "norm"))
Preset = Annotated[Optional[str], typer.Option(
    help="Model sizes: paper or small (default: paper on the paper's data sets, small on "
    "synthetic and kuairand_pure).")]
Epochs = Annotated[Optional[int], typer.Option(help="Maximum epochs per run (default 10).")]
MaxSteps = Annotated[Optional[int], typer.Option(
    help="Stop each run after this many optimizer steps, the epoch under way ending there "
    "(default 0: no limit); for smoke runs on large data.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Batch size (default 2048).")]
Patience = Annotated[Optional[int], typer.Option(
    help="Early-stopping patience in epochs (default 2).")]
Precision = Annotated[Optional[str], typer.Option(help="fp32 or bf16 (autocast).")]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N.")]
EmbeddingOptimizer = Annotated[Optional[str], typer.Option(
    help="How the embedding tables are trained: adam (default: dense, as the published "
    "tables), sparse_adam or rowwise_adagrad (sparse gradients; only the rows in the batch "
    "are updated; for large vocabularies).")]


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _esc(text: object) -> str:
    from rich.markup import escape

    return escape(str(text))


_AFTER_INTERRUPT = {
    "download": "rerun the same command to go on (a --url download resumes from its .part "
                "file; an import copies again)",
    "preprocess": "nothing was written; rerun the same command to start again",
    "train": "rerun the same command with --resume to go on from the last checkpoint",
    "evaluate": "nothing was written; rerun the same command",
    "compare": "finished runs are kept; rerun the same command to go on",
}


def friendly_errors(fn: Callable) -> Callable:
    """A PrlbenchError is one red line (no traceback), exit 1 (130 when interrupted); so are
    Ctrl-C / SIGTERM (exit 130), a lost connection and an OSError (disk full, bad path)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with cli_signals():
                return fn(*args, **kwargs)
        except PrlbenchError as e:
            _fail(_esc(e), 130 if isinstance(e, Interrupted) else 1)
        except KeyboardInterrupt:
            after = _AFTER_INTERRUPT.get(fn.__name__, "")
            _console().print(f"[yellow]interrupted[/]: {after}".rstrip(": "), soft_wrap=True)
            raise typer.Exit(130) from None
        except ConnectionError as e:  # e.g. a Ray cluster that cannot be reached
            _fail(f"connection failed: {_esc(e)}; check the address and the network, then "
                  "rerun the same command", 1)
        except OSError as e:
            _fail(_os_error(e), 1)

    return wrapper


def _fail(message: str, code: int):
    _console().print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code) from None


def _os_error(e: OSError) -> str:
    import errno

    where = f": {e.filename}" if e.filename else ""
    what = _esc(e.strerror or e)
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
        what = "a file stands where a folder is needed (in the path)"
    return f"{what}{_esc(where)}; free space, fix the path or its permissions, and rerun the " \
           "same command"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prlbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", metavar="", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """prlbench: benchmark PWiseR against BCE on multi-task recommenders."""


# ------------------------------------------------------------------------------- ls
@app.command("ls")
@friendly_errors
def ls(what: Annotated[str, typer.Argument(help="datasets, models or losses")]) -> None:
    """List the data sets, models or losses, with a one-line description each.

    Example: prlbench ls models
    """
    from rich.console import Console
    from rich.table import Table

    from prlbench.catalog import listing

    table = Table(show_header=True, header_style="bold")
    table.add_column("name")
    table.add_column("description")
    for name, desc in listing(what):
        table.add_row(name, desc)
    Console().print(table)


# ------------------------------------------------------------------------- download
@app.command()
@friendly_errors
def download(
    name: Dataset,
    url: Annotated[Optional[str], typer.Option(
        "--url", help="A direct URL or mirror of the raw archive (resumes a partial "
        "download).")] = None,
    from_path: Annotated[Optional[Path], typer.Option(
        "--from", help="Import a file or folder you fetched by hand.")] = None,
    sha256: Annotated[Optional[str], typer.Option(
        "--sha256", help="Expected sha256 of the file.")] = None,
    data_dir: DataDir = Path("datasets"),
    quiet: Quiet = False,
) -> None:
    """Fetch or import a data set's raw files into DATA_DIR/NAME/raw (checksummed).

    Examples:
      prlbench download aliexpress_nl --url https://mirror.example/NL.zip  # [needs the internet]
      prlbench download aliexpress_nl --from ~/aliexpress_NL_datasets.zip  # [needs your files]
      prlbench download aliccp         # [needs your files]: where to get it, what to run next
      prlbench download kuairand_pure  # [needs the internet]: fetched, md5 checked, unpacked
    """
    import shlex

    from prlbench.data.download import download as run_download

    raw = run_download(name, data_dir, url=url, from_path=from_path, progress=not quiet,
                       sha256=sha256)
    dd = "" if data_dir == Path("datasets") else f" --data-dir {shlex.quote(str(data_dir))}"
    _console().print(f"[green]raw files in[/] {_esc(raw)}\nnext: prlbench preprocess {name}{dd}",
                     soft_wrap=True)


# ----------------------------------------------------------------------- preprocess
@app.command()
@friendly_errors
def preprocess(
    name: Dataset,
    source: Annotated[Optional[Path], typer.Option(
        "--source", help="Raw archive or folder, or a processed CSV folder (default: "
        "DATA_DIR/NAME/raw).")] = None,
    # The generator's options and their defaults come from variants.KNOBS, the default named
    # for --max-unmatched is csvio.MAX_UNMATCHED (a test checks); None means "not given", so
    # the library's defaults apply.
    rows: Annotated[Optional[int], typer.Option(help=knob_help("rows") + ".")] = None,
    seed: Annotated[Optional[int], typer.Option(help=knob_help("seed") + ".")] = None,
    click_rate: Annotated[Optional[float], typer.Option(
        help=knob_help("click_rate") + ".")] = None,
    conversion_rate: Annotated[Optional[float], typer.Option(
        help=knob_help("conversion_rate") + ".")] = None,
    noise_rate: Annotated[Optional[float], typer.Option(
        help=knob_help("noise_rate") + ".")] = None,
    max_unmatched: Annotated[Optional[float], typer.Option(
        metavar="SHARE", help="Real data: the share of rows that may be dropped for want of "
        "their user row (AliExpress) or common features (Ali-CCP); more is an error (default "
        "0.001).")] = None,
    conversion: Annotated[Optional[str], typer.Option(
        metavar="LABEL", help="kuairand_pure: the deeper label that makes a click a conversion: "
        "like, long_view, follow, comment or forward (default like).")] = None,
    drop_unclicked_deep: Annotated[bool, typer.Option(
        "--drop-unclicked-deep", metavar="", help="kuairand_pure: drop the rows with the "
        "deeper label but no click (default: keep them as non-clicks).")] = False,
    data_dir: DataDir = Path("datasets"),
    quiet: Quiet = False,
) -> None:
    """Turn raw files into DATA_DIR/NAME/{train,val,test}.parquet and manifest.json.

    Examples:
      prlbench preprocess synthetic --rows 1000000 --noise-rate 0.3
      prlbench preprocess aliexpress_nl   # [needs your files]
      prlbench preprocess aliexpress_nl --source ~/MTReclib/data/AliExpress_NL  # [needs your files]
      prlbench preprocess aliccp --source ~/aliccp   # [needs your files]
      prlbench preprocess kuairand_pure --conversion long_view   # [needs the internet]
    """
    from prlbench.data.cache import dataset_dir
    from prlbench.data.preprocess import preprocess as run_preprocess

    manifest = run_preprocess(name, data_dir, source=source, progress=not quiet, rows=rows,
                              seed=seed, click_rate=click_rate, conversion_rate=conversion_rate,
                              noise_rate=noise_rate, max_unmatched=max_unmatched,
                              conversion=conversion,
                              drop_unclicked_deep=drop_unclicked_deep or None)
    _print_manifest(manifest, dataset_dir(data_dir, name))


def _print_manifest(manifest, where: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=_esc(f"{manifest['dataset']} -> {where}"), header_style="bold")
    for col in ("split", "rows", "click rate", "CTCVR rate", "CVR rate"):
        table.add_column(col, justify="right")
    for split, s in {**manifest["splits"], **manifest.get("extra_splits", {})}.items():
        table.add_row(split, f"{s['rows']:,}", f"{s['click_rate']:.4%}",
                      f"{s['ctcvr_rate']:.4%}", f"{s['cvr_rate']:.3%}")
    cols = manifest["columns"]
    Console().print(table)
    Console().print(f"{len(cols['categorical'])} categorical, {len(cols['numerical'])} numerical "
                    "features")


# ---------------------------------------------------------------------------- train
TrainSeeds = Annotated[Optional[str], typer.Option(
    help="Several seeds instead of --seed: a count (8 = seeds 1..8) or a list (1,2,3), trained "
    "one after another, or with --pack as one pack.")]
TrainPack = Annotated[Optional[bool], typer.Option(
    "--pack/--no-pack", help="With --seeds: train them as one pack, one process and one copy "
    "of the data, the runs taking turns step by step; each run's files are the solo run's byte "
    "for byte. Not faster; default --no-pack.")]


@app.command()
@friendly_errors
def train(
    dataset: Annotated[Optional[str], typer.Option(help="Data set (default synthetic).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Model (prlbench ls models; default mmoe).")] = None,
    loss: Annotated[Optional[str], typer.Option(
        help="Loss (prlbench ls losses; default bce).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (default 1).")] = None,
    seeds: TrainSeeds = None, pack: TrainPack = None,
    lam: Lambda = None, m1: M1 = None, m2: M2 = None, phi: Phi = None, score: Score = None,
    head: Head = None, norm: Norm = None, temperature: Temperature = None, alpha: Alpha = None,
    preset: Preset = None, epochs: Epochs = None, max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default 1e-3).")
                  ] = None,
    patience: Patience = None, device: Device = None, precision: Precision = None,
    embedding_optimizer: EmbeddingOptimizer = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", metavar="", help="Continue an interrupted run.")] = False,
    restart: Annotated[bool, typer.Option(
        "--restart", metavar="", help="Discard an interrupted run.")] = False,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="A YAML file with sections data / model / loss / train; flags win "
        "over the file, the file over defaults.")] = None,
    data_dir: DataDir = Path("datasets"),
    out: Annotated[Path, typer.Option(
        "--out", envvar="PRLBENCH_OUT", help="The results folder. Env: PRLBENCH_OUT.")
    ] = Path("results"),
    quiet: Quiet = False,
) -> None:
    """Train one model with one loss and seed (or several seeds); evaluate it on test
    at the end.

    Examples:
      prlbench train --dataset synthetic --model mmoe --loss pwiser --seed 1
      prlbench train --dataset aliexpress_nl --model ple --preset paper  # [needs your files]
      prlbench train --loss ranknet --head both --lambda 0.4286   # Combined-Pair (Lin et al.)
      prlbench train --loss pwiser --seeds 8   # seeds 1-8, one after another
    """
    from prlbench.config import resolve
    from prlbench.engine.run import train as run_train
    from prlbench.losses import all_params

    given = dict(locals())
    params = {key: given[key] for key in all_params()}
    cfg = resolve(config, {
        "data": {"dataset": dataset},
        "model": {"name": model, "preset": preset},
        "loss": {"name": loss, "params": {k: v for k, v in params.items() if v is not None}},
        "train": {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "patience": patience, "device": device, "precision": precision,
                  "threads": threads, "embedding_optimizer": embedding_optimizer,
                  "max_steps": max_steps}})
    _warn_slow_bf16(cfg.train.device, cfg.train.precision)
    if seeds is not None:
        return _train_seeds(cfg, seed, seeds, pack=pack, data_dir=data_dir, out=out,
                            resume=resume, restart=restart, quiet=quiet)
    run_dir = run_train(cfg, data_dir=data_dir, out=out, resume=resume, restart=restart,
                        progress=not quiet)
    _print_metrics(run_dir)


def _warn_slow_bf16(device: str, precision: str) -> None:
    if precision != "bf16":  # no torch import for the common case
        return
    from prlbench.engine.evaluate import slow_bf16_warning

    why = slow_bf16_warning(device, precision)
    if why:
        _console().print(f"[yellow]warning:[/] {_esc(why)}")


def _print_metrics(run_dir: Path, split: str = "test", notes: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    from prlbench.store import RunFolder

    folder = RunFolder(run_dir)
    record, metrics = folder.read_record(), folder.read_metrics(split)
    # a run folder's name is printed as it is: synthetic[noise=0.5]-... is no markup
    Console().print(f"[bold]{split} metrics of[/] {_esc(run_dir.name)}", soft_wrap=True)
    table = Table(header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.5f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if record.best_epoch is not None and notes:
        Console().print(f"best epoch {record.best_epoch} (validation score "
                        f"{record.best_val_score:.5f}), {record.samples_per_s:,.0f} "
                        f"samples/s; run folder: {run_dir}", markup=False, highlight=False,
                        soft_wrap=True)


def _train_seeds(cfg, seed: int | None, seeds: str, *, pack: bool | None, data_dir: Path,
                 out: Path, resume: bool, restart: bool, quiet: bool) -> None:
    from prlbench.engine.run import train_seeds
    from prlbench.experiment.grid import parse_seeds

    if seed is not None:
        raise ConfigError("--seed and --seeds: give one of them")
    chosen = parse_seeds(seeds)
    if not quiet and len(chosen) > 1:  # say what will happen: one after another, or a pack
        how = ("as one pack: one process, the runs taking turns step by step" if pack else
               "one after another (--pack trains them as one pack)")
        _console().print(f"training {len(chosen)} seeds ({', '.join(map(str, chosen))}) {how}",
                         markup=False, highlight=False)
    _print_runs(train_seeds(cfg, chosen, data_dir=data_dir, out=out, pack=pack,
                            resume=resume, restart=restart, progress=not quiet))


def _print_runs(run_dirs: list[Path]) -> None:
    """One line per run of train --seeds: its test AUCs and chosen epoch."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from prlbench.store import RunFolder

    table = Table(header_style="bold")
    for name in ("run", "best epoch", "CTR AUC", "CTCVR AUC", "samples/s"):
        table.add_column(name, justify="left" if name == "run" else "right",
                         overflow="fold")
    for run_dir in run_dirs:
        folder = RunFolder(run_dir)
        record, metrics = folder.read_record(), folder.read_metrics("test")
        table.add_row(Text(run_dir.name), str(record.best_epoch), f"{metrics['ctr_auc']:.5f}",
                      f"{metrics['ctcvr_auc']:.5f}", f"{record.samples_per_s:,.0f}")
    Console().print(table)
    Console().print(f"run folders in {run_dirs[0].parent}; test metrics of each in its "
                    "metrics.json (prlbench evaluate RUN_DIR prints them)", soft_wrap=True,
                    markup=False, highlight=False)


# ------------------------------------------------------------------------- evaluate
@app.command()
@friendly_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(
        help="A run folder, e.g. results/runs/<run-id>.")],
    device: Device = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", envvar="PRLBENCH_DATA_DIR",
        help="The Parquet cache; default: the one the run was trained on (its run.json).")
    ] = None,
    split: Annotated[str, typer.Option(
        help="test, or an extra evaluation split of the data set (kuairand_pure: test_random, "
        "the random-exposure log), written as metrics.<split>.json.")] = "test",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="",
                                        help="The metrics alone, without the run's notes.")
                     ] = False,
) -> None:
    """Evaluate a run's best checkpoint on the test split: metrics and per-example predictions.

    Examples:
      prlbench evaluate results/runs/synthetic-mmoe-pwiser-s1-0123456789
      prlbench evaluate KUAIRAND_RUN_DIR --split test_random  # [needs the internet]
    """
    from prlbench.engine.run import evaluate_run

    evaluate_run(run_dir, data_dir, device=device, split=split)
    _print_metrics(run_dir, split, notes=not quiet)


# -------------------------------------------------------------------------- compare
# compare's own options (those it shares with train are declared at the top)
Datasets = Annotated[str, typer.Option(help="Comma-separated data sets.")]
Models = Annotated[str, typer.Option(help="Comma-separated models, or all.")]
Losses = Annotated[str, typer.Option(
    help="Comma-separated losses (prlbench ls losses); bce is the baseline. A loss with settings "
    "of its own is an arm of its own: \"bce,pwiser,pwiser[norm=paper]\".")]
Seeds = Annotated[str, typer.Option(help="A count (8 = seeds 1..8) or a list (1,2,3).")]
LambdaList, M1List, M2List, TemperatureList, AlphaList, PhiList, ScoreList, HeadList, \
    NormList = (_loss_option(k, str, *(("--lambda",) if k == "lam" else ()), listed=True)
                for k in ("lam", "m1", "m2", "temperature", "alpha", "phi", "score", "head",
                          "norm"))
LrList = Annotated[Optional[str], typer.Option(
    "--lr", help="Learning rate (default 0.001). A comma-separated list is chosen on validation "
    "for every arm, the baseline included.")]
WeightDecayList = Annotated[Optional[str], typer.Option(
    "--weight-decay", help="Adam weight decay (default 1e-06). A comma-separated list is chosen "
    "on validation for every arm, the baseline included.")]
TuneSeeds = Annotated[Optional[str], typer.Option(
    help="Seeds that choose the settings given as lists (mean validation score over them), "
    "never reported: a count (2 = seeds 1001, 1002; the default) or a list disjoint from "
    "--seeds.")]
NoiseRates, ClickRates, ConversionRates, RowCounts = (
    Annotated[Optional[str], typer.Option(
        KNOBS[option].flag, help=f"{knob_help(option)}; a comma-separated list sweeps it, one "
        f"data set variant per value (synthetic[{KNOBS[option].short}=...]), each its own cache "
        "and its own rows in the tables.")]
    for option in ("noise_rate", "click_rate", "conversion_rate", "rows"))
Executor = Annotated[str, typer.Option(help="local (process pool) or ray.")]
Jobs = Annotated[Optional[int], typer.Option(help="Runs at once (default: min(cores, 2)).")]
RunThreads = Annotated[Optional[int], typer.Option(
    help="torch threads per run (default: cores // jobs).")]
Pack = Annotated[Optional[bool], typer.Option(
    "--pack/--no-pack", help="Train the runs that differ only in seed and loss as packs: one "
    "process and one copy of the data per pack, its runs taking turns step by step; each run's "
    "files are the solo run's byte for byte. Not faster; default --no-pack.")]
RayAddress = Annotated[Optional[str], typer.Option(
    help="Ray cluster address (auto, ray://host:port); default: a local instance.")]
Formats = Annotated[str, typer.Option(
    "--format", help="Tables to write: md, latex (the CSVs of every number behind them are "
    "always written).")]
Cells = Annotated[str, typer.Option(
    help="What each cell of the paper-layout tables (auc.tex, auc.md) shows beside its mean "
    "and marker: std (mean ± std), ci (the CI of its difference to bce, under the mean) or mean "
    "(the mean alone). The detail tables (auc_detail.*) always show everything.")]
PlanOnly = Annotated[bool, typer.Option(
    "--plan", metavar="", help="Train nothing: print the runs to train and to reuse, the time "
    "they will take (from a few timed steps of each model on this machine) and the memory a "
    "job and all jobs need; a grid that would not fit this machine's memory is refused with "
    "the options that make it fit.")]
TablesOnly = Annotated[bool, typer.Option(
    "--tables-only", metavar="", help="Train nothing: tables from the finished runs only.")]
Test = Annotated[str, typer.Option(
    help="The significance test of each delta: twolevel (the default: t-test of the CI's "
    "model, seeds and the shared test set), bootstrap (from the CI's replicates), or wilcoxon "
    "/ ttest (over seeds only, conditional on this test set).")]
Equivalence = Annotated[Optional[str], typer.Option(
    help="Equivalence margins per metric kind, in its units: 0.002 (AUC only) or "
    "auc=0.002,logloss=0.0005 (each at most 0.02): two one-sided tests against +-margin; a "
    "cell that passes is shown as equivalent rather than n.s.")]
TestSplit = Annotated[str, typer.Option(
    help="The test split the tables report: standard (the data set's test split), random "
    "(kuairand_pure's random-exposure log, test_random) or both (auc.test_random.md beside "
    "auc.md).")]
Correction = Annotated[str, typer.Option(help="Multiple-testing correction: holm or bh.")]
CompareConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="A YAML file of what every run shares: model (preset, overrides), loss "
    "(params: values or candidate lists) and train sections; flags win. The grid itself comes "
    "from --datasets / --models / --losses / --seeds.")]
ExperimentDir = Annotated[Optional[Path], typer.Option(
    "--out", help="The experiment folder (default results/compare, or $PRLBENCH_OUT/compare).")]


@app.command()
@friendly_errors
def compare(
    datasets: Datasets = GRID_DEFAULTS["datasets"], models: Models = GRID_DEFAULTS["models"],
    losses: Losses = GRID_DEFAULTS["losses"], seeds: Seeds = GRID_DEFAULTS["seeds"],
    lam: LambdaList = None, m1: M1List = None, m2: M2List = None, phi: PhiList = None,
    score: ScoreList = None, head: HeadList = None, norm: NormList = None,
    temperature: TemperatureList = None, alpha: AlphaList = None,
    lr: LrList = None, weight_decay: WeightDecayList = None, tune_seeds: TuneSeeds = None,
    noise_rate: NoiseRates = None, click_rate: ClickRates = None,
    conversion_rate: ConversionRates = None, rows: RowCounts = None,
    preset: Preset = None, epochs: Epochs = None, max_steps: MaxSteps = None,
    batch_size: BatchSize = None, patience: Patience = None, precision: Precision = None,
    embedding_optimizer: EmbeddingOptimizer = None,
    device: Device = None, executor: Executor = "local", jobs: Jobs = None,
    threads: RunThreads = None, pack: Pack = None, ray_address: RayAddress = None,
    fmt: Formats = GRID_DEFAULTS["format"], cells: Cells = "std",
    tables_only: TablesOnly = False, plan_only: PlanOnly = False, test: Test = "twolevel",
    correction: Correction = "holm",
    equivalence: Equivalence = None,
    test_split: TestSplit = "standard", config: CompareConfigFile = None,
    data_dir: DataDir = Path("datasets"), out: ExperimentDir = None, quiet: Quiet = False,
) -> None:
    """Run the grid data sets x models x losses x seeds (resumably) and write significance-tested
    AUC tables (Markdown, LaTeX, CSV) and plots.

    Examples:
      prlbench compare
      prlbench compare --models mmoe,ple --losses bce,pwiser,ranknet --seeds 8
      prlbench compare --losses bce,pwiser,graded,ranknet,listce --lambda 0.1,0.5,1
      prlbench compare --noise-rate 0,0.3,0.6 --seeds 10 --test bootstrap
      prlbench compare --lr 5e-4,1e-3,2e-3 --tune-seeds 2 --equivalence auc=0.001
      prlbench compare --datasets aliexpress_nl,aliexpress_fr --models all  # [needs your files]
      prlbench compare --executor ray --ray-address auto   # [needs a Ray cluster]
      prlbench compare --device cuda --seeds 8   # [needs a GPU]
      prlbench compare --format latex --out results/nl_fr --tables-only   # [needs your files]
      prlbench compare --tables-only --cells ci
      prlbench compare --models mmoe,ple --preset paper --plan
    """
    from prlbench.experiment.compare import compare as run_compare, default_out, significance_plan
    from prlbench.experiment.grid import CompareConfig

    flags = dict(locals())  # every option above, by name (None: not given)
    flags["format"] = flags.pop("fmt")
    flags.pop("plan_only")
    cc = CompareConfig.resolve(config, flags)
    _warn_slow_bf16(cc.grid.base.train.device, cc.grid.base.train.precision)
    if len(cc.grid.seeds) == 1:
        _console().print("[yellow]warning:[/] --seeds 1: with one seed no significance test is "
                         "possible; use --seeds 8 or more")
    plan, plan_warnings = significance_plan(cc)
    if plan and not quiet:
        _console().print(_esc(plan), highlight=False)
    for w in plan_warnings:
        _console().print(f"[yellow]warning:[/] {_esc(w)}")
    if plan_only:
        return _print_plan(cc, data_dir, out or default_out(), quiet)
    res = run_compare(cc, data_dir=data_dir, out=out or default_out(), progress=not quiet)
    _print_compare(res)
    if res.failed:
        raise typer.Exit(1)


def _print_plan(cc, data_dir: Path, out: Path, quiet: bool) -> None:
    """compare --plan: the runs, the time and the memory; refused where it cannot fit."""
    from prlbench.experiment.plan import make_plan

    grid_plan = make_plan(cc, data_dir, out, progress=not quiet)
    for line in grid_plan.lines():
        _console().print(line, markup=False, highlight=False, soft_wrap=True)
    if not grid_plan.fits:
        raise ConfigError(grid_plan.refusal())


def _print_compare(res) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    if res.markdown:
        Console().print(Markdown(res.markdown))
    else:  # the Markdown ends with the warnings already
        for w in res.warnings:
            _console().print(f"[yellow]warning:[/] {_esc(w)}")
    for o in res.failed:
        _console().print(f"[red]failed:[/] {_esc(o.run_id)}: {_esc(o.error)}")
    if res.missing:
        _console().print(f"[yellow]{len(res.missing)} runs not trained yet[/] (--tables-only); "
                         "run without --tables-only to train them")
    if res.written:
        _console().print("wrote: " + ", ".join(str(p) for p in res.written), markup=False,
                         highlight=False)
    else:
        _console().print("no run finished, so no table or plot was written"
                         + (f" (the {len(res.removed)} files of an earlier report were removed)"
                            if res.removed else ""))
