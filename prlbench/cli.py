"""The `prlbench` command: a thin layer over the library. Heavy imports (torch, pandas, pyarrow)
happen inside the commands, so `prlbench --help` stays instant."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable, Optional

import typer

from prlbench import __version__

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

# Shared options, defined once.
DataDir = typer.Option(Path("datasets"), "--data-dir", envvar="PRLBENCH_DATA_DIR",
                       help="The Parquet cache of data sets. Env: PRLBENCH_DATA_DIR.")
OutDir = typer.Option(Path("results"), "--out", envvar="PRLBENCH_OUT",
                      help="The results folder. Env: PRLBENCH_OUT.")
ConfigFile = typer.Option(None, "--config", exists=False, help="A YAML file with sections data / "
                          "model / loss / train; flags win over the file, the file over defaults.")
Quiet = typer.Option(False, "--quiet", "-q", metavar="", help="No progress bars.")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def friendly_errors(fn: Callable) -> Callable:
    """Show a PrlbenchError as one red line (no traceback) and exit 1; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from prlbench.errors import PrlbenchError
        from prlbench.registry import UnknownNameError

        try:
            with _sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except (PrlbenchError, UnknownNameError) as e:
            _console().print(f"[bold red]error:[/] {_esc(e)}", soft_wrap=True)
            code = 130 if type(e).__name__ == "Interrupted" else 1
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            _console().print(f"[yellow]interrupted[/]: {_AFTER_INTERRUPT.get(fn.__name__, '')}"
                             .rstrip(": "), soft_wrap=True)
            raise typer.Exit(130) from None
        except ConnectionError as e:  # e.g. a Ray cluster that cannot be reached
            _console().print(f"[bold red]error:[/] connection failed: {_esc(e)}; check the "
                             "address and the network, then rerun the same command",
                             soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as e:  # disk full, a path that is a file, no permission...
            import errno

            where = f": {e.filename}" if e.filename else ""
            what = _esc(e.strerror or e)
            if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
                what = "a file stands where a folder is needed (in the path)"
            _console().print(f"[bold red]error:[/] {what}{_esc(where)}; free space, fix the path "
                             "or its permissions, and rerun the same command", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


_AFTER_INTERRUPT = {
    "download": "rerun the same command to go on (a --url download resumes from its .part "
                "file; an import copies again)",
    "preprocess": "nothing was written; rerun the same command to start again",
    "train": "rerun the same command with --resume to go on from the last checkpoint",
    "evaluate": "nothing was written; rerun the same command",
    "compare": "finished runs are kept; rerun the same command to go on",
}


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, a cluster's scheduler) unwinds like Ctrl-C, so that every cleanup runs:
    no staging folder, partial download or half-written result is left behind."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _esc(e: Exception) -> str:
    from rich.markup import escape

    return escape(str(e))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prlbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", metavar="", callback=_version,
                                      is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """prlbench: benchmark PWiseR against BCE on multi-task recommenders."""


# ------------------------------------------------------------------------------------ ls
@app.command("ls")
@friendly_errors
def ls(what: str = typer.Argument(..., help="datasets, models or losses")) -> None:
    """List the data sets, models or losses, with a one-line description each.

    Example: prlbench ls models
    """
    from rich.console import Console
    from rich.table import Table

    rows = _listing(what)
    table = Table(show_header=True, header_style="bold")
    table.add_column("name")
    table.add_column("description")
    for name, desc in rows:
        table.add_row(name, desc)
    Console().print(table)


def _listing(what: str) -> list[tuple[str, str]]:
    from prlbench.errors import ConfigError

    if what == "datasets":
        from prlbench.data.datasets import DATASETS

        return [(n, DATASETS.get(n).description) for n in DATASETS]
    if what == "models":
        from prlbench.models import MODELS

        return [(n, getattr(MODELS.get(n), "summary", "")) for n in MODELS]
    if what == "losses":
        from prlbench.losses import LOSS_SUMMARIES, LOSSES

        return [(n, LOSS_SUMMARIES.get(n, "")) for n in LOSSES]
    raise ConfigError(f"prlbench ls {what}: expected one of datasets, models, losses")


# ------------------------------------------------------------------------------ download
@app.command()
@friendly_errors
def download(
    name: str = typer.Argument(..., help="A data set name (prlbench ls datasets)."),
    url: Optional[str] = typer.Option(None, "--url", help="A direct URL or mirror of the raw "
                                      "archive (resumes a partial download)."),
    from_path: Optional[Path] = typer.Option(None, "--from", help="Import a file or folder you "
                                             "fetched by hand."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected sha256 of the file."),
    data_dir: Path = DataDir,
    quiet: bool = Quiet,
) -> None:
    """Fetch or import a data set's raw files into DATA_DIR/NAME/raw (checksummed).

    Examples:
      prlbench download aliexpress_nl --url https://mirror.example/aliexpress_NL_datasets.zip
      prlbench download aliexpress_nl --from ~/Downloads/aliexpress_NL_datasets.zip
      prlbench download aliccp          # says where to get it and what to run next
    """
    from prlbench.data.download import download as run_download

    raw = run_download(name, data_dir, url=url, from_path=from_path, progress=not quiet,
                       sha256=sha256)
    import shlex

    dd = "" if data_dir == Path("datasets") else f" --data-dir {shlex.quote(str(data_dir))}"
    _console().print(f"[green]raw files in[/] {_esc(raw)}\nnext: prlbench preprocess {name}{dd}",
                     soft_wrap=True)


# ---------------------------------------------------------------------------- preprocess
@app.command()
@friendly_errors
def preprocess(
    name: str = typer.Argument(..., help="A data set name (prlbench ls datasets)."),
    source: Optional[Path] = typer.Option(None, "--source", help="Raw archive or folder, or a "
                                          "processed CSV folder (default: DATA_DIR/NAME/raw)."),
    # The defaults named are preprocess_synthetic's and csvio.MAX_UNMATCHED (a test checks);
    # None means "not given", so the library's defaults apply.
    rows: Optional[int] = typer.Option(None, help="synthetic: training impressions, the "
                                       "validation split included (default 100000)."),
    seed: Optional[int] = typer.Option(None, help="synthetic: generator seed (default 0)."),
    click_rate: Optional[float] = typer.Option(None, help="synthetic: P(click) (default 0.05)."),
    conversion_rate: Optional[float] = typer.Option(None, help="synthetic: P(conversion | click) "
                                                    "(default 0.1)."),
    noise_rate: Optional[float] = typer.Option(None, help="synthetic: share of clicks that are "
                                               "noise (default 0.3)."),
    max_unmatched: Optional[float] = typer.Option(
        None, metavar="SHARE", help="Real data: the share of rows that may be dropped for want of "
        "their user row (AliExpress) or common features (Ali-CCP); more is an error (default "
        "0.001)."),
    data_dir: Path = DataDir,
    quiet: bool = Quiet,
) -> None:
    """Turn raw files into DATA_DIR/NAME/{train,val,test}.parquet and manifest.json.

    Examples:
      prlbench preprocess synthetic --rows 1000000 --noise-rate 0.3
      prlbench preprocess aliexpress_nl
      prlbench preprocess aliexpress_nl --source ~/MTReclib/data/AliExpress_NL
      prlbench preprocess aliccp --source ~/aliccp
    """
    from prlbench.data.preprocess import preprocess as run_preprocess

    manifest = run_preprocess(name, data_dir, source=source, progress=not quiet, rows=rows,
                              seed=seed, click_rate=click_rate, conversion_rate=conversion_rate,
                              noise_rate=noise_rate, max_unmatched=max_unmatched)
    _print_manifest(manifest, data_dir / name)


def _print_manifest(manifest: dict, where: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{manifest['dataset']} -> {where}", header_style="bold")
    for col in ("split", "rows", "click rate", "CTCVR rate", "CVR rate"):
        table.add_column(col, justify="right")
    for split, s in manifest["splits"].items():
        table.add_row(split, f"{s['rows']:,}", f"{s['click_rate']:.4%}",
                      f"{s['ctcvr_rate']:.4%}", f"{s['cvr_rate']:.3%}")
    cols = manifest["columns"]
    Console().print(table)
    Console().print(f"{len(cols['categorical'])} categorical, {len(cols['numerical'])} numerical "
                    "features")


# --------------------------------------------------------------------------------- train
@app.command()
@friendly_errors
def train(
    dataset: Optional[str] = typer.Option(None, help="Data set (default synthetic)."),
    model: Optional[str] = typer.Option(None, help="Model (prlbench ls models; default mmoe)."),
    loss: Optional[str] = typer.Option(None, help="Loss: bce, pwiser or ranknet (default bce)."),
    seed: Optional[int] = typer.Option(None, help="Seed (default 1)."),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Weight of the pairwise term "
                                        "(pwiser, ranknet; default 0.5)."),
    m1: Optional[float] = typer.Option(None, help="PWiseR margin, conversion vs click-only "
                                       "(default 0.05)."),
    m2: Optional[float] = typer.Option(None, help="PWiseR margin, conversion vs non-click "
                                       "(default 0.1)."),
    phi: Optional[str] = typer.Option(None, help="PWiseR phi: squared_hinge (default), hinge, "
                                      "logistic."),
    score: Optional[str] = typer.Option(None, help="prob or logit (default: prob for pwiser, "
                                        "logit for ranknet)."),
    head: Optional[str] = typer.Option(None, help="PWiseR head: ctr (default), ctcvr or both."),
    preset: Optional[str] = typer.Option(None, help="Model sizes: paper or small (default small "
                                         "on synthetic, paper otherwise)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (default 10)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 2048)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 1e-3)."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in epochs "
                                           "(default 2)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (autocast)."),
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    resume: bool = typer.Option(False, "--resume", metavar="",
                                help="Continue an interrupted run."),
    restart: bool = typer.Option(False, "--restart", metavar="",
                                 help="Discard an interrupted run."),
    config: Optional[Path] = ConfigFile,
    data_dir: Path = DataDir,
    out: Path = OutDir,
    quiet: bool = Quiet,
) -> None:
    """Train one model with one loss and seed; evaluate it on test at the end.

    Examples:
      prlbench train --dataset synthetic --model mmoe --loss pwiser --seed 1
      prlbench train --dataset aliexpress_nl --model ple --loss pwiser --lambda 0.5 --m1 0.05 --m2 0.1 --preset paper
    """
    from prlbench.config import resolve
    from prlbench.data.preprocess import ensure_synthetic
    from prlbench.engine.train import train_run

    loss_params = {"lam": lam, "m1": m1, "m2": m2, "phi": phi, "score": score, "head": head}
    flags = {
        "data": {"dataset": dataset},
        "model": {"name": model, "preset": preset},
        "loss": {"name": loss, "params": {k: v for k, v in loss_params.items() if v is not None}},
        "train": {"seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                  "patience": patience, "device": device, "precision": precision,
                  "threads": threads},
    }
    cfg = resolve(config, flags)
    if cfg.data.dataset == "synthetic":
        ensure_synthetic(data_dir, progress=not quiet)
    run_dir = train_run(cfg, data_dir=data_dir, out=out, resume=resume, restart=restart,
                        progress=not quiet)
    _print_metrics(run_dir)


def _print_metrics(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from prlbench.results import read_json

    record = read_json(run_dir / "run.json")
    metrics = read_json(run_dir / "metrics.json")
    Console().print(f"[bold]test metrics of[/] {run_dir.name}", soft_wrap=True)
    table = Table(header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.5f}" if isinstance(value, float) else str(value))
    Console().print(table)
    if "best_epoch" in record:
        Console().print(f"best epoch {record['best_epoch']} (validation score "
                        f"{record['best_val_score']:.5f}), {record['samples_per_s']:,.0f} "
                        f"samples/s; run folder: {run_dir}")


# ------------------------------------------------------------------------------ evaluate
@app.command()
@friendly_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder, e.g. results/runs/<run-id>."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", envvar="PRLBENCH_DATA_DIR",
        help="The Parquet cache; default: the one the run was trained on (its run.json)."),
) -> None:
    """Evaluate a run's best checkpoint on the test split: metrics and per-example predictions.

    Example: prlbench evaluate results/runs/synthetic-mmoe-pwiser-s1-0123456789
    """
    from prlbench.engine.evaluate import evaluate_run

    evaluate_run(run_dir, data_dir, device=device)
    _print_metrics(run_dir)




# ------------------------------------------------------------------------------- compare
def _floats(text: Optional[str], flag: str) -> Optional[list[float]]:
    from prlbench.errors import ConfigError

    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected a number or a comma-separated list, got {text!r}"
                          ) from None


def _seeds(text: str) -> tuple[int, ...]:
    from prlbench.errors import ConfigError

    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            seeds = tuple(range(1, int(text) + 1))
    except ValueError:
        raise ConfigError(f"--seeds: expected a count (6) or a list (1,2,3), got {text!r}"
                          ) from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds: need at least one seed, none negative and no repeats, got "
                          f"{text!r}")
    return seeds


@app.command()
@friendly_errors
def compare(
    datasets: str = typer.Option("synthetic", help="Comma-separated data sets."),
    models: str = typer.Option("mmoe", help="Comma-separated models, or all."),
    losses: str = typer.Option("bce,pwiser", help="Comma-separated losses; bce is the baseline."),
    seeds: str = typer.Option("8", help="A count (8 = seeds 1..8) or a list (1,2,3)."),
    lam: Optional[str] = typer.Option(None, "--lambda", help="Pairwise weight of pwiser and "
                                      "ranknet (default 0.5); a list is chosen on validation "
                                      "(e.g. 0.1,0.5,1)."),
    m1: Optional[str] = typer.Option(None, help="PWiseR margin m1 (default 0.05), or a list."),
    m2: Optional[str] = typer.Option(None, help="PWiseR margin m2 (default 0.1), or a list."),
    phi: Optional[str] = typer.Option(None, help="PWiseR phi: squared_hinge (default), hinge, "
                                      "logistic."),
    score: Optional[str] = typer.Option(None, help="prob or logit, for pwiser (default prob) "
                                        "and ranknet (default logit) alike."),
    head: Optional[str] = typer.Option(None, help="PWiseR head: ctr (default), ctcvr or both."),
    preset: Optional[str] = typer.Option(None, help="paper or small (default small on "
                                         "synthetic, paper otherwise)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs per run (default 10)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 2048)."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in epochs "
                                           "(default 2)."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N."),
    executor: str = typer.Option("local", help="local (process pool) or ray."),
    jobs: Optional[int] = typer.Option(None, help="Runs at once (default: min(cores, 2))."),
    threads: Optional[int] = typer.Option(None, help="torch threads per run (default: "
                                          "cores // jobs)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (auto, "
                                              "ray://host:port); default: a local instance."),
    fmt: str = typer.Option("md,latex", "--format", help="Tables to write: md, latex (the CSVs "
                            "of every number behind them are always written)."),
    tables_only: bool = typer.Option(False, "--tables-only", metavar="", help="Train nothing: "
                                     "tables from the finished runs only."),
    test: str = typer.Option("wilcoxon", help="Paired test over seeds: wilcoxon or ttest."),
    correction: str = typer.Option("holm", help="Multiple-testing correction: holm or bh."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="A YAML file of what every run shares: model (preset, overrides), "
        "loss (params: values or candidate lists) and train sections; flags win. The grid "
        "itself comes from --datasets / --models / --losses / --seeds."),
    data_dir: Path = DataDir,
    out: Optional[Path] = typer.Option(None, "--out", help="The experiment folder (default "
                                       "results/compare, or $PRLBENCH_OUT/compare)."),
    quiet: bool = Quiet,
) -> None:
    """Run the grid data sets x models x losses x seeds (resumably) and write significance-tested
    AUC tables (Markdown, LaTeX, CSV) and plots.

    Examples:
      prlbench compare
      prlbench compare --models mmoe,ple --losses bce,pwiser,ranknet --seeds 8
      prlbench compare --datasets aliexpress_nl,aliexpress_fr --models all --preset paper --jobs 2
      prlbench compare --executor ray --ray-address auto
      prlbench compare --format latex --out results/nl_fr --tables-only
    """
    from rich.console import Console
    from rich.markdown import Markdown

    from prlbench.compare import compare as run_compare
    from prlbench.runner import make_executor

    if out is None:
        import os

        out = Path(os.environ.get("PRLBENCH_OUT") or "results") / "compare"
    grid = _grid(datasets, models, losses, seeds, config, dict(
        lam=_floats(lam, "--lambda"), m1=_floats(m1, "--m1"), m2=_floats(m2, "--m2")),
        {"phi": phi, "score": score, "head": head},
        {"preset": preset}, {"epochs": epochs, "batch_size": batch_size, "patience": patience,
                             "precision": precision, "device": device})
    formats = _formats(fmt)
    stats_options = _stats_options(test, correction)
    _check_data(grid, data_dir, quiet, generate=not tables_only)
    if len(grid.seeds) == 1:
        _console().print("[yellow]warning:[/] --seeds 1: with one seed no significance test is "
                         "possible; use --seeds 8 or more")
    gpus = 1.0 if grid.base.train.device.startswith("cuda") else 0.0
    if executor == "local" and not tables_only:  # Ray workers may have GPUs the driver lacks
        from prlbench.engine.train import resolve_device

        resolve_device(grid.base.train.device)
    ex = None if tables_only else make_executor(executor, jobs=jobs, ray_address=ray_address,
                                                threads=threads, gpus=gpus)
    res = run_compare(grid, executor=ex, data_dir=data_dir, out=out, formats=formats,
                      train=not tables_only, progress=not quiet, stats_options=stats_options)
    console = Console()
    if res.markdown:
        console.print(Markdown(res.markdown))
    if not res.markdown:  # the Markdown ends with the warnings already
        for w in res.warnings:
            _console().print(f"[yellow]warning:[/] {_esc(w)}")
    for o in res.failed:
        _console().print(f"[red]failed:[/] {o.run_id}: {_esc(o.error)}")
    if res.missing:
        _console().print(f"[yellow]{len(res.missing)} runs not trained yet[/] (--tables-only); "
                         "run without --tables-only to train them")
    if res.written:
        _console().print("wrote: " + ", ".join(str(p) for p in res.written))
    else:
        _console().print("no run finished, so no table or plot was written"
                         + (f" (the {len(res.removed)} files of an earlier report were removed)"
                            if res.removed else ""))
    if res.failed:
        raise typer.Exit(1)


def _grid(datasets, models, losses, seeds, config, lists, loss_fixed, model_flags, train_flags):
    from prlbench.config import resolve
    from prlbench.data.datasets import DATASETS
    from prlbench.losses import LOSSES
    from prlbench.models import MODELS
    from prlbench.runner import Grid

    from prlbench.errors import ConfigError
    from prlbench.losses import loss_params

    data, file_params = _compare_file(config)
    base = resolve(config, {"model": model_flags, "train": train_flags}, finish=False,
                   file_data=data)
    loss_names = tuple(LOSSES.resolve(losses))
    if "bce" not in loss_names:
        raise ConfigError("--losses must include bce, the baseline every loss is compared to")
    # Each loss takes the parameters it knows from this grid (Grid.candidates filters);
    # flags win over the file's loss.params.
    loss_grid = {k: list(dict.fromkeys(v)) for k, v in lists.items() if v}  # no repeats
    loss_grid.update({k: [v] for k, v in loss_fixed.items() if v is not None})
    for key, value in file_params.items():
        if value == [] or value is None:
            raise ConfigError(f"{config}: loss.params.{key} is empty; give a value or a list of "
                              "candidates, or remove the key")
        values = list(dict.fromkeys(value)) if isinstance(value, list) else [value]
        loss_grid.setdefault(key, values)
        if not any(key in loss_params(n) for n in loss_names):
            raise ConfigError(f"{config}: loss.params.{key}: none of the losses "
                              f"{', '.join(loss_names)} takes it; remove it or add a loss that "
                              "does to --losses")
    return Grid(datasets=tuple(DATASETS.resolve(datasets)), models=tuple(MODELS.resolve(models)),
                losses=("bce",) + tuple(n for n in loss_names if n != "bce"),
                seeds=_seeds(seeds), loss_grid=loss_grid, base=base)


def _compare_file(config: Optional[Path]) -> tuple[dict, dict]:
    """A --config file for compare: (the file without its loss section, loss.params). The grid
    comes from --datasets / --models / --losses / --seeds, so the file may not name them."""
    from prlbench.config import load_yaml
    from prlbench.errors import ConfigError

    if config is None:
        return {}, {}
    data = dict(load_yaml(config))
    flags = {("data", "dataset"): "--datasets", ("model", "name"): "--models",
             ("loss", "name"): "--losses", ("train", "seed"): "--seeds"}
    for (section, key), flag in flags.items():
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


def _formats(text: str) -> tuple[str, ...]:
    from prlbench.errors import ConfigError

    aliases = {"md": "md", "markdown": "md", "latex": "tex", "tex": "tex", "csv": "csv"}
    out = []
    for f in (x.strip() for x in text.split(",") if x.strip()):
        if f not in aliases:
            raise ConfigError(f"--format: unknown format {f!r}; valid: md, latex (the CSVs "
                              "are always written)")
        out.append(aliases[f])
    return tuple(out)


def _stats_options(test: str, correction: str) -> dict:
    from prlbench.errors import ConfigError

    if test not in ("wilcoxon", "ttest"):
        raise ConfigError(f"--test must be wilcoxon or ttest, got {test!r}")
    if correction not in ("holm", "bh"):
        raise ConfigError(f"--correction must be holm or bh, got {correction!r}")
    return {"test": test, "correction": correction}


def _check_data(grid, data_dir: Path, quiet: bool, *, generate: bool) -> None:
    """Fail before any training if a data set is not preprocessed (synthetic is generated,
    except for --tables-only, which never creates anything)."""
    from prlbench.data.cache import open_cache
    from prlbench.data.preprocess import ensure_synthetic

    for name in grid.datasets:
        if name == "synthetic" and generate:
            ensure_synthetic(data_dir, progress=not quiet)
        open_cache(data_dir, name, verify=False)
