"""Training speed: samples/s per model x preset x precision, against the machine's matmul peak.

Times forward + loss + backward + Adam step over whole-tensor batches (`loader.batches`, the
engine's path), warm-up steps excluded; counts each step's matmul FLOPs (FlopCounterMode) to
give GFLOP/s and the fraction of a large torch.mm's rate on the same threads; compares with the
peers' per-sample `Dataset` + `DataLoader` feeding the same model; compares the experts of a
mixture computed together (ExpertBank) with one MLP per expert; and measures bf16 autocast's
effect on test AUC through the real engine (`train_run`).

    python benchmarks/bench_train.py                  # full run, ~8 min on 2 cores
    python benchmarks/bench_train.py --quick          # smoke run, small preset, ~1 min
    python benchmarks/bench_train.py --device cuda --models mmoe,ple --precision bf16
    python benchmarks/bench_train.py --profile ple:paper:fp32   # top ops of a few steps
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from prlbench import stats
from prlbench.config import resolve
from prlbench.data.cache import open_cache
from prlbench.data.loader import TensorData, batches, load_split
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.engine.evaluate import autocast, predict
from prlbench.engine.run import train_run
from prlbench.experiment.store import RunFolder
from prlbench.losses import LOSSES
from prlbench.models import MODELS, create_model
from prlbench.models.layers import MLP, ExpertBank


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="all", help="comma-separated model names, or all")
    p.add_argument("--presets", default=None, help="small,paper (--quick: small)")
    p.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 or both")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30, help="timed steps per small-preset run")
    p.add_argument("--paper-steps", type=int, default=None,
                   help="timed steps per paper-preset run (default: steps / 6, at least 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each timing")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the data stay on it)")
    p.add_argument("--loss", default="pwiser", help="the loss timed (pwiser includes bce)")
    p.add_argument("--rows", type=int, default=100_000, help="synthetic training rows")
    p.add_argument("--data-dir", type=Path, default=None, help="use an existing cache instead")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--baseline-models", default="mmoe", help="models for the DataLoader check")
    p.add_argument("--auc-epochs", type=int, default=2)
    p.add_argument("--auc-seeds", type=int, default=2)
    p.add_argument("--skip", default="", help="any of: baseline,experts,auc")
    p.add_argument("--profile", default=None, help="MODEL:PRESET:PRECISION -> profiler table")
    p.add_argument("--quick", action="store_true", help="small data, few steps (~1 min)")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.steps, args.paper_steps, args.warmup = 20_000, 8, 2, 1
        args.auc_epochs, args.auc_seeds = 1, 1
        args.presets = args.presets or "small"
    args.presets = args.presets or "small,paper"
    args.paper_steps = args.paper_steps or max(3, args.steps // 6)
    args.threads = args.threads or len(os.sched_getaffinity(0))
    args.models = MODELS.names() if args.models == "all" else args.models.split(",")
    for key in ("presets", "precision", "baseline_models", "skip"):
        setattr(args, key, [v for v in getattr(args, key).split(",") if v])
    if any(v not in ("fp32", "bf16") for v in args.precision):
        p.error(f"--precision: expected fp32, bf16 or fp32,bf16, got {','.join(args.precision)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    return args


# ------------------------------------------------------------------ machine and peak
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def machine_facts(args) -> None:
    cpu = platform.processor() or "?"
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: "?")()
    print(f"oneDNN native bf16 on this CPU: {bf16}; load average (1/5/15 min): {load()}")


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of an n x n @ n x n torch.mm (the best of `reps`, after two warm-ups)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------ our training path
def full_batches(data: TensorData, batch_size: int, seed: int = 0):
    """Endless shuffled full batches (a short last batch is skipped: BatchNorm needs > 1 row)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for batch in batches(data, batch_size, shuffle=True, generator=gen):
            if len(batch) == batch_size:
                yield batch.categorical, batch.numerical, batch.click, batch.conversion


def build(name: str, preset: str, manifest: dict, device: str) -> torch.nn.Module:
    cols = manifest["columns"]
    torch.manual_seed(0)
    return create_model(name, vocab_sizes=[manifest["vocab_sizes"][c] for c in cols["categorical"]],
                        num_numerical=len(cols["numerical"]), preset=preset).to(device)


def make_step(model, loss_name: str, device: str, precision: str):
    """One engine step: autocast forward + loss, backward, Adam; returns the loss (a sync)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = LOSSES.get(loss_name)
    model.train()

    def step(cat, num, click, conversion) -> float:
        with autocast(device, precision):
            loss, _ = loss_fn(model(cat, num), click, conversion)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def time_steps(step, source, warmup: int, steps: int, device: str) -> float:
    """samples/s from the median step (batch fetch included) of `steps` timed steps after
    `warmup` untimed ones; source yields batch tuples. The median, because on a shared machine
    one descheduled OpenMP thread can stall a single step by a second or more."""
    it = iter(source)
    for batch in itertools.islice(it, warmup):
        step(*batch)
    times, size = [], 0
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        batch = next(it)
        step(*batch)
        sync(device)
        times.append(time.perf_counter() - t0)
        size = batch[0].shape[0]
    return size / statistics.median(times)


def flops_per_step(model, loss_name: str, batch, device: str) -> int:
    """Matmul FLOPs of one fp32 forward + loss + backward (what FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    loss_fn = LOSSES.get(loss_name)
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = loss_fn(model(batch[0], batch[1]), batch[2], batch[3])
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def throughput(args, manifest, train: TensorData, peaks: dict) -> list[dict]:
    rows = []
    for name, preset in itertools.product(args.models, args.presets):
        steps = args.paper_steps if preset == "paper" else args.steps
        probe = build(name, preset, manifest, args.device)
        flops = flops_per_step(probe, args.loss, next(full_batches(train, args.batch_size)),
                               args.device)
        del probe
        for precision in args.precision:
            model = build(name, preset, manifest, args.device)
            rate = time_steps(make_step(model, args.loss, args.device, precision),
                              full_batches(train, args.batch_size), args.warmup, steps,
                              args.device)
            gflops = flops * rate / args.batch_size / 1e9
            row = dict(model=name, preset=preset, precision=precision, rate=rate,
                       gflops=gflops, pct=100 * gflops / peaks[precision],
                       mflop_sample=flops / args.batch_size / 1e6, steps=steps)
            rows.append(row)
            print(f"  {name:13s} {preset:5s} {precision}: {rate:10,.0f} samples/s "
                  f"{gflops:7.1f} GFLOP/s ({steps} steps, load {load()})", flush=True)
    return rows


# ------------------------------------------------------------------ the peers' per-sample path
class PerSampleDataset(Dataset):
    """MTReclib's AliExpressDataset pattern: numpy rows, one __getitem__ per sample."""

    def __init__(self, data: TensorData) -> None:
        self.categorical = data.categorical.cpu().numpy()
        self.numerical = data.numerical.cpu().numpy()
        self.labels = torch.stack([data.click, data.conversion], 1).cpu().numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.categorical[index], self.numerical[index], self.labels[index]


def per_sample_source(data: TensorData, batch_size: int, device: str):
    """Endless DataLoader epochs (default collate, no workers), moved to the device per batch."""
    loader = DataLoader(PerSampleDataset(data), batch_size=batch_size, shuffle=True,
                        num_workers=0, drop_last=True)
    while True:
        for cat, num, labels in loader:
            labels = labels.to(device)
            yield cat.to(device), num.to(device), labels[:, 0], labels[:, 1]


def baseline(args, manifest, train: TensorData) -> list[dict]:
    """Both feeds timed back to back on the same model and step count (less drift in load)."""
    rows = []
    for name, preset in itertools.product(args.baseline_models, args.presets):
        steps = args.paper_steps if preset == "paper" else args.steps
        rates = {}
        for key, source in (("ours", full_batches(train, args.batch_size)),
                            ("naive", per_sample_source(train, args.batch_size, args.device))):
            model = build(name, preset, manifest, args.device)
            rates[key] = time_steps(make_step(model, args.loss, args.device, "fp32"), source,
                                    args.warmup, steps, args.device)
        rows.append(dict(model=name, preset=preset, steps=steps, **rates))
        print(f"  {name} {preset}: per-sample DataLoader {rates['naive']:,.0f} samples/s, "
              f"whole-tensor {rates['ours']:,.0f} samples/s, x{rates['ours'] / rates['naive']:.2f}",
              flush=True)
    return rows


# ------------------------------------------------------------------ experts together vs apart
def experts_together(args, fields: int) -> list[dict]:
    """fwd+bwd of E experts as one ExpertBank vs E separate MLPs (same widths), fp32; the
    input is [B, fields * embed_dim], the flattened embedding a mixture's experts read."""
    from prlbench.models.factory import MODEL_PRESETS

    rows = []
    for preset in args.presets:
        spec = MODEL_PRESETS[preset]
        width, dims, num = fields * spec["embed_dim"], spec["bottom_dims"], spec["num_experts"]
        x = torch.randn(args.batch_size, width, device=args.device)
        bank = ExpertBank(width, dims, num, spec["dropout"]).to(args.device)
        apart = torch.nn.ModuleList(MLP(width, dims, spec["dropout"]) for _ in range(num))
        apart = apart.to(args.device)
        reps = args.paper_steps if preset == "paper" else args.steps

        def run(fn):
            def step(x):
                fn(x).sum().backward()
            return time_steps(step, itertools.repeat((x,)), args.warmup, reps, args.device)

        together = run(bank)
        separate = run(lambda x: torch.stack([m(x) for m in apart], 1))
        rows.append(dict(preset=preset, experts=num, dims=f"{width}-{'-'.join(map(str, dims))}",
                         together=together, separate=separate))
        print(f"  {preset}: {num} experts {rows[-1]['dims']}: together {together:,.0f}, "
              f"one by one {separate:,.0f} samples/s", flush=True)
    return rows


# ------------------------------------------------------------------ bf16's effect on AUC
def bf16_auc(args, data_dir: Path, out: Path) -> list[dict]:
    """mmoe small trained by the real engine in fp32 and in bf16, same data and seeds; the bf16
    model's best checkpoint is also scored with an fp32 forward ("bf16 train, fp32 eval"), which
    separates what bf16 does to training from what bf16 logits (8-bit mantissa) do to ranking."""
    manifest = open_cache(data_dir, args.dataset)
    test = load_split(data_dir, args.dataset, "test", device=args.device, manifest=manifest)
    rows = []
    for seed in range(1, args.auc_seeds + 1):
        row = {"seed": seed}
        for precision in ("fp32", "bf16"):
            cfg = resolve(None, {
                "data": {"dataset": args.dataset},
                "model": {"name": "mmoe", "preset": "small"},
                "loss": {"name": args.loss},
                "train": {"seed": seed, "epochs": args.auc_epochs, "precision": precision,
                          "device": args.device, "threads": args.threads,
                          "batch_size": args.batch_size, "patience": args.auc_epochs}})
            run_dir = train_run(cfg, data_dir=data_dir, out=out, progress=False)
            folder = RunFolder(run_dir)
            metrics, record = folder.read_metrics(), folder.read_record()
            row[precision] = dict(ctr=metrics["ctr_auc"], ctcvr=metrics["ctcvr_auc"],
                                  rate=record.samples_per_s)
        row["bf16_fp32eval"] = score_fp32(args, manifest, RunFolder(run_dir), test)
        rows.append(row)
        f, b, e = row["fp32"], row["bf16"], row["bf16_fp32eval"]
        print(f"  seed {seed}: fp32 CTR {f['ctr']:.4f} CTCVR {f['ctcvr']:.4f} | bf16 CTR "
              f"{b['ctr']:.4f} CTCVR {b['ctcvr']:.4f} | bf16-trained, fp32 eval CTR "
              f"{e['ctr']:.4f} CTCVR {e['ctcvr']:.4f}", flush=True)
    return rows


def score_fp32(args, manifest, run: RunFolder, test: TensorData) -> dict:
    model = build("mmoe", "small", manifest, args.device)
    model.load_state_dict(run.load_best(args.device))
    preds = predict(model, test, precision="fp32")
    return dict(ctr=stats.auc(test.click.cpu().numpy(), preds["p_ctr"]),
                ctcvr=stats.auc(test.conversion.cpu().numpy(), preds["p_ctcvr"]))


# ------------------------------------------------------------------ profiler
def profile(args, manifest, train: TensorData) -> None:
    name, preset, precision = (args.profile.split(":") + ["paper", "fp32"])[:3]
    model = build(name, preset, manifest, args.device)
    step = make_step(model, args.loss, args.device, precision)
    source = full_batches(train, args.batch_size)
    for batch in itertools.islice(source, args.warmup):
        step(*batch)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for batch in itertools.islice(source, 3):
            step(*batch)
    key = "self_device_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"\nprofile of 3 steps of {name} {preset} {precision} (by self time):")
    print(prof.key_averages().table(sort_by=key, row_limit=18))


# ------------------------------------------------------------------ report
def md_table(title: str, header: list[str], body: list[list[str]], left: int = 1) -> None:
    """A Markdown table: the first `left` columns left-aligned, the others right-aligned."""
    print(f"\n## {title}\n\n| " + " | ".join(header) + " |")
    print("|---" * left + "|---:" * (len(header) - left) + "|")
    for cells in body:
        print("| " + " | ".join(cells) + " |")


def report(args, peaks: dict, rows, base, experts, auc) -> None:
    md_table(f"Training throughput ({args.device}, {args.threads} threads, batch "
             f"{args.batch_size}, loss {args.loss}, load {load()})",
             ["model", "preset", "precision", "samples/s", "MFLOP/sample", "GFLOP/s",
              "% of matmul peak"],
             [[r["model"], r["preset"], r["precision"], f"{r['rate']:,.0f}",
               f"{r['mflop_sample']:.1f}", f"{r['gflops']:.1f}", f"{r['pct']:.1f} %"]
              for r in rows], left=3)
    print(f"\nmatmul peak (torch.mm 2048^3, same threads): fp32 {peaks['fp32']:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.1f} GFLOP/s; '% of matmul peak' is against the row's own "
          "precision. FLOPs: matmul FLOPs of forward + backward (FlopCounterMode); samples/s: "
          "batch / median step time (fetch + forward + loss + backward + Adam).")
    if base:
        md_table("Whole-tensor batches vs a per-sample Dataset + DataLoader (same model, fp32)",
                 ["model", "preset", "per-sample DataLoader samples/s", "whole-tensor samples/s",
                  "speed-up"],
                 [[r["model"], r["preset"], f"{r['naive']:,.0f}", f"{r['ours']:,.0f}",
                   f"{r['ours'] / r['naive']:.2f}x"] for r in base], left=2)
    if experts:
        md_table("Experts computed together (ExpertBank) vs one MLP per expert (fwd+bwd, fp32)",
                 ["preset", "experts", "widths", "together samples/s", "one by one samples/s",
                  "ratio"],
                 [[r["preset"], str(r["experts"]), r["dims"], f"{r['together']:,.0f}",
                   f"{r['separate']:,.0f}", f"{r['together'] / r['separate']:.2f}x"]
                  for r in experts], left=3)
    if auc:
        md_table(f"bf16 autocast vs fp32: mmoe small, {args.auc_epochs} epochs, test AUC "
                 "(train_run)",
                 ["seed", "fp32 CTR", "bf16 CTR", "diff", "bf16 train, fp32 eval CTR",
                  "fp32 CTCVR", "bf16 CTCVR", "diff", "bf16 train, fp32 eval CTCVR",
                  "fp32 samples/s", "bf16 samples/s"],
                 [[str(r["seed"]), *_auc_cells(r, "ctr"), *_auc_cells(r, "ctcvr"),
                   f"{r['fp32']['rate']:,.0f}", f"{r['bf16']['rate']:,.0f}"] for r in auc])


def _auc_cells(r: dict, key: str) -> list[str]:
    f, b, e = r["fp32"][key], r["bf16"][key], r["bf16_fp32eval"][key]
    return [f"{f:.4f}", f"{b:.4f}", f"{b - f:+.4f}", f"{e:.4f}"]


def run_sections(args, data_dir: Path, tmp: Path, manifest: dict, train: TensorData, peaks):
    rows = throughput(args, manifest, train, peaks)
    base = experts = auc = []
    if "baseline" not in args.skip:
        print("per-sample DataLoader baseline:")
        base = baseline(args, manifest, train)
    if "experts" not in args.skip:
        print("experts together vs one by one:")
        cols = manifest["columns"]
        experts = experts_together(args, len(cols["categorical"]) + bool(cols["numerical"]))
    if "auc" not in args.skip:
        print("bf16 vs fp32 test AUC (train_run):")
        auc = bf16_auc(args, data_dir, tmp / "out")
    return rows, base, experts, auc


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine_facts(args)
    tmp = Path(tempfile.mkdtemp(prefix="prlbench-bench-train-"))
    try:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir, args.dataset = tmp / "data", "synthetic"
            preprocess_synthetic(data_dir, rows=args.rows, progress=False)
        manifest = open_cache(data_dir, args.dataset)
        train = load_split(data_dir, args.dataset, "train", device=args.device, manifest=manifest)
        print(f"data: {args.dataset}, train {len(train):,} rows on {args.device}")
        if args.profile:
            profile(args, manifest, train)
            return
        peaks = {p: matmul_peak(args.device, d)
                 for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        print(f"matmul peak: fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s")
        print("throughput:")
        report(args, peaks, *run_sections(args, data_dir, tmp, manifest, train, peaks))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
