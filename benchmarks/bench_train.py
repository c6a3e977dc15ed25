"""Training speed: samples/s per model x preset x precision, against the machine's matmul peak.

Times forward + loss + backward + Adam step over whole-tensor batches (`loader.batches`, the
engine's path), warm-up steps excluded; counts each step's matmul FLOPs (FlopCounterMode) to
give GFLOP/s and the fraction of a large torch.mm's rate on the same threads; compares with the
peers' per-sample `Dataset` + `DataLoader` feeding the same model; compares the experts of a
mixture computed together (ExpertBank) with one MLP per expert; measures bf16 autocast's
effect on test AUC through the real engine (`train_run`); and puts prlbench side by side with the
peers' whole path (a per-sample Dataset + DataLoader with 4 workers feeding an MMoE written as
MTReclib writes it: a ModuleList of expert MLPs, torch.cat of their outputs, sigmoid outputs
and BCELoss), measured in the same run: prlbench fp32, bf16 and packed seeds / the peer path.

    python benchmarks/bench_train.py                  # full run, ~8 min on 2 cores
    python benchmarks/bench_train.py --quick          # smoke run, small preset, ~1 min
    python benchmarks/bench_train.py --device cuda --models mmoe,ple --precision bf16
    python benchmarks/bench_train.py --profile ple:paper:fp32   # top ops of a few steps
    python benchmarks/bench_train.py --skip throughput,baseline,experts,auc   # the peer only
    python benchmarks/bench_train.py --skip throughput,baseline,experts,auc,peer,pack  # kernels

The kernels section times each mixture model (OMoE, MMoE, PLE, MetaHeac) against the same
network written the peers' way (each expert its own Linear / BatchNorm1d / ReLU / torch Dropout
stack, run one by one and stacked; MMoE also as MTReclib writes it, `PeerMMoE`), step for step
in turn on one batch (forward, loss, backward, Adam), at each preset and precision.
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
from prlbench.engine.loop import batch_loss, descend
from prlbench.engine.run import train_run
from prlbench.store import RunFolder
from prlbench.losses import LOSSES
from prlbench.models import MODELS, create_model
from prlbench.machine import reuse_freed_memory
from prlbench.models.layers import MLP, Dropout, ExpertBank


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
    p.add_argument("--skip", default="",
                   help="any of: throughput,baseline,experts,auc,peer,pack,kernels")
    p.add_argument("--kernel-models", default="omoe,mmoe,ple,metaheac",
                   help="kernels section: the mixture models timed against their peer form")
    p.add_argument("--with-packed", action="store_true",
                   help="throughput: also every model with --pack-members seeds packed")
    p.add_argument("--pack-members", type=int, default=8,
                   help="seeds in the packed model of the peer comparison")
    p.add_argument("--epoch-rows", type=int, default=None,
                   help="also time one whole epoch of mmoe (paper preset) on a synthetic data "
                   "set of this many training rows, e.g. 12000000 (AliExpress-NL-sized)")
    p.add_argument("--pack-batch-sizes", default="256,512,2048",
                   help="pack section: per-member batch sizes at which solo and packed mmoe "
                   "small steps are timed")
    p.add_argument("--peer-workers", type=int, default=4,
                   help="DataLoader workers of the peer path (MTReclib uses 4 or 8)")
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
    for key in ("presets", "precision", "baseline_models", "skip", "kernel_models"):
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


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 8,
                budget_s: float = 10.0) -> float:
    """GFLOP/s of an n x n @ n x n torch.mm (the best of `reps`, after two warm-ups; fewer
    when they pass `budget_s`, as emulated bf16 on a CPU without it takes a minute each)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, start = float("inf"), time.perf_counter()
    for i in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        took = time.perf_counter() - t0
        if i >= 2 or time.perf_counter() - start > budget_s:
            best = min(best, took)
        if best < float("inf") and time.perf_counter() - start > budget_s:
            break
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------ our training path
def full_batches(data: TensorData, batch_size: int, seed: int = 0):
    """Endless shuffled full batches (a short last batch is skipped: BatchNorm needs > 1 row)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for batch in batches(data, batch_size, shuffle=True, generator=gen):
            if len(batch) == batch_size:
                yield batch.categorical, batch.numerical, batch.click, batch.conversion


def build(name: str, preset: str, manifest: dict, device: str, seed: int = 0
          ) -> torch.nn.Module:
    cols = manifest["columns"]
    torch.manual_seed(seed)
    return create_model(name, vocab_sizes=[manifest["vocab_sizes"][c] for c in cols["categorical"]],
                        num_numerical=len(cols["numerical"]), preset=preset).to(device)


def make_step(model, loss_name: str, device: str, precision: str):
    """One engine step (engine.loop's batch_loss and descend: autocast forward + loss,
    backward, Adam); returns the loss (a sync)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = LOSSES.get(loss_name)
    model.train()

    def step(cat, num, click, conversion) -> float:
        loss = batch_loss(model, loss_fn, cat, num, click, conversion, device=device,
                          precision=precision, params={})
        descend(opt, loss)
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
            if args.with_packed:
                S = args.pack_members
                rate = time_steps(make_pack_step(preset, manifest, S, args.loss, args.device,
                                                 precision, name),
                                  full_batches(train, args.batch_size * S), args.warmup,
                                  max(2, steps // 2), args.device)
                gflops = flops * rate / args.batch_size / 1e9
                rows.append(dict(row, precision=f"{precision} packed x{S}", rate=rate,
                                 gflops=gflops, pct=100 * gflops / peaks[precision]))
                print(f"  {name:13s} {preset:5s} {precision} packed x{S}: {rate:10,.0f} "
                      f"samples/s (all members)", flush=True)
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


# ------------------------------------------------------------------ the peer, side by side
class PeerMLP(torch.nn.Module):
    """The peers' MultiLayerPerceptron: (Linear, BatchNorm1d, ReLU, Dropout) per width, then
    an optional Linear(., 1)."""

    def __init__(self, in_dim: int, dims, dropout: float, output_layer: bool) -> None:
        super().__init__()
        layers = []
        for width in dims:
            layers += [torch.nn.Linear(in_dim, width), torch.nn.BatchNorm1d(width),
                       torch.nn.ReLU(), torch.nn.Dropout(p=dropout)]
            in_dim = width
        if output_layer:
            layers.append(torch.nn.Linear(in_dim, 1))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


class PeerMMoE(torch.nn.Module):
    """MMoE as the peers write it: one offset embedding table and a Linear for the
    numericals, a ModuleList of expert MLPs run one by one and joined with torch.cat, a
    Linear + Softmax gate per task, towers ending in a sigmoid (probabilities, for BCELoss)."""

    def __init__(self, vocab_sizes, num_numerical: int, *, embed_dim, bottom_dims, tower_dims,
                 num_experts, dropout, **_) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(sum(vocab_sizes), embed_dim)
        torch.nn.init.xavier_uniform_(self.embedding.weight.data)
        self.offsets = torch.tensor([0, *itertools.accumulate(vocab_sizes)][:-1])
        self.numerical = torch.nn.Linear(num_numerical, embed_dim)
        self.embed_output_dim = (len(vocab_sizes) + 1) * embed_dim
        self.expert = torch.nn.ModuleList(
            PeerMLP(self.embed_output_dim, bottom_dims, dropout, output_layer=False)
            for _ in range(num_experts))
        self.gate = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(self.embed_output_dim, num_experts),
                                torch.nn.Softmax(dim=1)) for _ in range(2))
        self.tower = torch.nn.ModuleList(
            PeerMLP(bottom_dims[-1], tower_dims, dropout, output_layer=True) for _ in range(2))

    def forward(self, categorical, numerical):
        cat_emb = self.embedding(categorical + self.offsets.to(categorical.device))
        num_emb = self.numerical(numerical).unsqueeze(1)
        emb = torch.cat([cat_emb, num_emb], 1).view(-1, self.embed_output_dim)
        gate_value = [self.gate[i](emb).unsqueeze(1) for i in range(2)]
        fea = torch.cat([self.expert[i](emb).unsqueeze(1) for i in range(len(self.expert))],
                        dim=1)
        task_fea = [torch.bmm(gate_value[i], fea).squeeze(1) for i in range(2)]
        return [torch.sigmoid(self.tower[i](task_fea[i]).squeeze(1)) for i in range(2)]


def peer_step(model, device: str, precision: str):
    """The peers' step: BCELoss on each task's probability, the mean over tasks, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.BCELoss()
    model.train()

    def step(cat, num, click, conversion) -> float:
        with autocast(device, precision):
            y = model(cat, num)
        loss = (criterion(y[0].float(), click) + criterion(y[1].float(), conversion)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def peer_source(data: TensorData, batch_size: int, device: str, workers: int):
    """Endless DataLoader epochs over the per-sample Dataset with `workers` worker processes."""
    loader = DataLoader(PerSampleDataset(data), batch_size=batch_size, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    while True:
        for cat, num, labels in loader:
            labels = labels.to(device)
            yield cat.to(device), num.to(device), labels[:, 0], labels[:, 1]


def make_pack_step(preset: str, manifest: dict, members: int, loss_name: str, device: str,
                   precision: str, name: str = "mmoe"):
    """One step of a pack of `members` seeds of model `name`, as engine.pack takes it: each
    member's solo step in turn (its own model and Adam; the batch holds each member's rows in
    turn); returns the summed loss. A pack shares a process and the data, not arithmetic."""
    steps = [make_step(build(name, preset, manifest, device, seed=seed), loss_name, device,
                       precision) for seed in range(1, members + 1)]

    def step(cat, num, click, conversion) -> float:
        rows = len(click) // members
        return sum(fn(cat[s * rows:(s + 1) * rows], num[s * rows:(s + 1) * rows],
                      click[s * rows:(s + 1) * rows], conversion[s * rows:(s + 1) * rows])
                   for s, fn in enumerate(steps))
    return step


def peer(args, manifest, train: TensorData) -> list[dict]:
    """For each preset, in one run: the peer path (fp32, and bf16 autocast) and prlbench's
    mmoe fp32, bf16 and packed seeds (fp32); samples/s of each and the ratios to the peer."""
    from prlbench.models.factory import MODEL_PRESETS

    cols = manifest["columns"]
    vocab = [manifest["vocab_sizes"][c] for c in cols["categorical"]]
    rows = []
    for preset in args.presets:
        steps = args.paper_steps if preset == "paper" else args.steps
        rates = {}
        for precision in args.precision:
            torch.manual_seed(0)
            model = PeerMMoE(vocab, len(cols["numerical"]), **MODEL_PRESETS[preset])
            rates[f"peer {precision}"] = time_steps(
                peer_step(model.to(args.device), args.device, precision),
                peer_source(train, args.batch_size, args.device, args.peer_workers),
                args.warmup, steps, args.device)
            rates[f"prlbench {precision}"] = time_steps(
                make_step(build("mmoe", preset, manifest, args.device), args.loss, args.device,
                          precision), full_batches(train, args.batch_size), args.warmup, steps,
                args.device)
        S = args.pack_members
        rates["prlbench packed"] = time_steps(
            make_pack_step(preset, manifest, S, args.loss, args.device, "fp32"),
            full_batches(train, args.batch_size * S), args.warmup, max(2, steps // 2),
            args.device)
        rows.append(dict(preset=preset, steps=steps, members=S, **rates))
        print(f"  {preset}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
              + f" samples/s (load {load()})", flush=True)
    return rows


# ------------------------------------------------------------------ kernels: mixtures, peer form
class PeerBank(torch.nn.Module):
    """An ExpertBank written the peers' way: one PeerMLP per expert (and a Linear(., 1) where
    the bank ends in one, MetaHeac's critics), run one by one, outputs stacked [B, E, w]."""

    def __init__(self, bank: ExpertBank) -> None:
        super().__init__()
        shapes = [tuple(w.shape) for w in bank.weights]  # [E, out, in] each
        dims = [out for _, out, _ in shapes[:len(bank.norms)]]
        ends = len(shapes) > len(bank.norms)
        assert not ends or shapes[-1][1] == 1, "PeerMLP's output layer is Linear(., 1)"
        self.experts = torch.nn.ModuleList(
            PeerMLP(shapes[0][2], dims, bank.dropout.p, output_layer=ends)
            for _ in range(bank.num_experts))

    def forward(self, x):
        return torch.stack([expert(x if x.dim() == 2 else x[:, e])
                            for e, expert in enumerate(self.experts)], dim=1)


def peer_form(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` written the peers' way: each ExpertBank a PeerBank, each dropout
    torch's nn.Dropout; everything else (embedding, gates, towers, loss) the same."""
    import copy

    twin = copy.deepcopy(model)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ExpertBank):
                setattr(module, name, PeerBank(child))
            elif isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return twin


def interleaved(steps: dict, batch, warmup: int, reps: int) -> dict:
    """samples/s of each step function from the median of `reps` timed steps, the functions
    taking turns step by step on the same batch (so drifts of the machine hit all alike)."""
    for step in steps.values():
        for _ in range(warmup):
            step(*batch)
    times = {key: [] for key in steps}
    for _ in range(reps):
        for key, step in steps.items():
            t0 = time.perf_counter()
            step(*batch)
            times[key].append(time.perf_counter() - t0)
    return {key: len(batch[2]) / statistics.median(t) for key, t in times.items()}


def kernels(args, manifest, train: TensorData, peaks: dict) -> list[dict]:
    """Each mixture model x preset x precision: prlbench's model and its peer form (and, for
    MMoE, MTReclib's structure), interleaved; the % of the matmul peak of prlbench's step."""
    from prlbench.models.factory import MODEL_PRESETS

    cols = manifest["columns"]
    vocab = [manifest["vocab_sizes"][c] for c in cols["categorical"]]
    batch = next(full_batches(train, args.batch_size))
    rows = []
    for name, preset, precision in itertools.product(args.kernel_models, args.presets,
                                                     args.precision):
        reps = args.paper_steps if preset == "paper" else args.steps
        model = build(name, preset, manifest, args.device)
        flops = flops_per_step(model, args.loss, batch, args.device)
        steps = {"prlbench": make_step(model, args.loss, args.device, precision),
                 "peer form": make_step(peer_form(model), args.loss, args.device, precision)}
        if name == "mmoe":
            torch.manual_seed(0)
            mtreclib = PeerMMoE(vocab, len(cols["numerical"]), **MODEL_PRESETS[preset])
            steps["MTReclib MMoE"] = peer_step(mtreclib.to(args.device), args.device, precision)
        rates = interleaved(steps, batch, args.warmup, reps)
        pct = 100 * rates["prlbench"] * flops / args.batch_size / 1e9 / peaks[precision]
        rows.append(dict(model=name, preset=preset, precision=precision, pct=pct, **rates))
        print(f"  {name} {preset} {precision}: " + ", ".join(
            f"{k} {v:,.0f}" for k, v in rates.items()) + f" samples/s; prlbench / peer form "
            f"x{rates['prlbench'] / rates['peer form']:.2f}, {pct:.0f} % of the {precision} "
            f"matmul peak (load {load()})", flush=True)
    return rows


# ------------------------------------------------------------------ packed vs solo by batch size
def pack_by_batch(args, manifest, train: TensorData) -> list[dict]:
    """mmoe small, fp32: --pack-members seeds one after another (each its own model and Adam)
    vs packed into one model, at each per-member batch size; samples/s of all members."""
    rows = []
    S = args.pack_members
    for bs in (int(b) for b in args.pack_batch_sizes.split(",") if b):
        models = [build("mmoe", "small", manifest, args.device, seed=s) for s in range(1, S + 1)]
        steps = [make_step(m, args.loss, args.device, "fp32") for m in models]

        def solo_step(cat, num, click, conversion, steps=steps, bs=bs):
            for k, step in enumerate(steps):
                rows_k = slice(k * bs, (k + 1) * bs)
                step(cat[rows_k], num[rows_k], click[rows_k], conversion[rows_k])

        solo = time_steps(solo_step, full_batches(train, bs * S), args.warmup, args.steps // 2,
                          args.device)
        packed = time_steps(make_pack_step("small", manifest, S, args.loss, args.device, "fp32"),
                            full_batches(train, bs * S), args.warmup, args.steps // 2,
                            args.device)
        rows.append(dict(batch=bs, members=S, solo=solo, packed=packed))
        print(f"  batch {bs} x {S} members: solo {solo:,.0f}, packed {packed:,.0f} samples/s, "
              f"x{packed / solo:.2f}", flush=True)
    return rows


# ------------------------------------------------------------------ one whole epoch
def epoch_time(args, tmp: Path) -> list[dict]:
    """Seconds of one epoch of mmoe at the paper preset (every batch of the training split
    through forward, loss, backward and Adam, on --device) on a synthetic data set of
    --epoch-rows training rows, for each precision."""
    data_dir = tmp / "epoch-data"
    t0 = time.perf_counter()
    preprocess_synthetic(data_dir, rows=args.epoch_rows, progress=False)
    manifest = open_cache(data_dir, "synthetic")
    train = load_split(data_dir, "synthetic", "train", device=args.device, manifest=manifest)
    print(f"  {len(train):,} training rows generated and loaded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for precision in args.precision:
        step = make_step(build("mmoe", "paper", manifest, args.device), args.loss, args.device,
                         precision)
        gen = torch.Generator().manual_seed(0)
        sync(args.device)
        t0 = time.perf_counter()
        for batch in batches(train, args.batch_size, shuffle=True, generator=gen):
            if len(batch) > 1:
                step(batch.categorical, batch.numerical, batch.click, batch.conversion)
        sync(args.device)
        seconds = time.perf_counter() - t0
        rows.append(dict(precision=precision, rows=len(train), seconds=seconds))
        print(f"  mmoe paper {precision}: one epoch of {len(train):,} rows in {seconds:.1f} s "
              f"({len(train) / seconds:,.0f} samples/s)", flush=True)
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


def report(args, peaks: dict, rows, base, experts, auc, peers, epochs, packs, kerns) -> None:
    if kerns:
        md_table(f"Each mixture model / the same network written the peers' way, step for step "
                 f"in turn on one batch ({args.device}, {args.threads} threads, batch "
                 f"{args.batch_size}, loss {args.loss})",
                 ["model", "preset", "precision", "prlbench samples/s", "peer form samples/s",
                  "prlbench / peer form", "MTReclib MMoE samples/s", "% of matmul peak"],
                 [[r["model"], r["preset"], r["precision"], f"{r['prlbench']:,.0f}",
                   f"{r['peer form']:,.0f}", f"{r['prlbench'] / r['peer form']:.2f}x",
                   f"{r['MTReclib MMoE']:,.0f}" if "MTReclib MMoE" in r else "",
                   f"{r['pct']:.0f} %"] for r in kerns], left=3)
        print("\npeer form: each expert its own Linear / BatchNorm1d / ReLU / torch Dropout, one "
              "by one, stacked; the rest of the model is prlbench's. Target: every ratio >= 1.00x,"
              " and the paper-preset MMoE bf16 step >= 45 % of the bf16 matmul peak on a CPU "
              "with native bf16.")
    if packs:
        md_table(f"Packed vs solo by batch size: mmoe small, fp32, {packs[0]['members']} seeds "
                 f"({args.device}, {args.threads} threads)",
                 ["batch per member", "solo samples/s", "packed samples/s", "packed / solo"],
                 [[str(r["batch"]), f"{r['solo']:,.0f}", f"{r['packed']:,.0f}",
                   f"{r['packed'] / r['solo']:.2f}x"] for r in packs])
    if epochs:
        md_table(f"One epoch of mmoe, paper preset ({args.device}, batch {args.batch_size})",
                 ["precision", "training rows", "seconds", "samples/s"],
                 [[r["precision"], f"{r['rows']:,}", f"{r['seconds']:.1f}",
                   f"{r['rows'] / r['seconds']:,.0f}"] for r in epochs])
    if peers:
        targets = {"prlbench fp32": ("paper", 1.5), "prlbench bf16": ("paper", 4.0),
                   "prlbench packed": ("small", 5.0)}
        body = []
        for r in peers:
            for key in ("prlbench fp32", "prlbench bf16", "prlbench packed"):
                if key not in r:
                    continue
                ratio = r[key] / r["peer fp32"]
                where, goal = targets[key]
                body.append([r["preset"], key + (f" ({r['members']} seeds)" if "packed" in key
                                                 else ""),
                             f"{r[key]:,.0f}", f"{r['peer fp32']:,.0f}", f"{ratio:.2f}x",
                             f">= {goal:g}x" if r["preset"] == where else ""])
            if "peer bf16" in r:
                body.append([r["preset"], "peer bf16", f"{r['peer bf16']:,.0f}",
                             f"{r['peer fp32']:,.0f}", f"{r['peer bf16'] / r['peer fp32']:.2f}x",
                             ""])
        md_table(f"prlbench / the peer path, measured in this run ({args.device}, {args.threads} "
                 f"threads, batch {args.batch_size}; peer: per-sample Dataset + DataLoader with "
                 f"{args.peer_workers} workers, MTReclib-style MMoE, fp32)",
                 ["preset", "path", "samples/s", "peer fp32 samples/s", "ratio", "target"],
                 body, left=2)
        print("\npacked: all seeds' samples per second together (each seed its own rows); "
              "the peer trains seeds one after another.")
    if not rows:
        return
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
    rows = base = experts = auc = peers = epochs = packs = kerns = []
    if "kernels" not in args.skip:
        print("each mixture model and its peer form, interleaved:")
        kerns = kernels(args, manifest, train, peaks)
    if "pack" not in args.skip:
        print("packed vs solo by batch size:")
        packs = pack_by_batch(args, manifest, train)
    if args.epoch_rows:
        print("one whole epoch:")
        epochs = epoch_time(args, tmp)
    if "peer" not in args.skip:
        print("prlbench and the peer path, side by side:")
        peers = peer(args, manifest, train)
    if "throughput" not in args.skip:
        print("throughput:")
        rows = throughput(args, manifest, train, peaks)
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
    return rows, base, experts, auc, peers, epochs, packs, kerns


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the engine does when it trains on a CPU
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
        # Emulated bf16 (no AVX-512 BF16 / AMX) runs a 2048^3 mm in about a minute: 512^3.
        emulated = (not args.device.startswith("cuda")
                    and not getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", bool)())
        peaks = {p: matmul_peak(args.device, d, n=512 if p == "bf16" and emulated else 2048)
                 for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        print(f"matmul peak: fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s")
        report(args, peaks, *run_sections(args, data_dir, tmp, manifest, train, peaks))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
