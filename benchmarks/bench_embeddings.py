"""Embedding optimizers: samples/s and peak memory of each train.embedding_optimizer, small vs
large vocabularies.

Times whole MMoE training steps (forward, BCE, backward, optimizer step) at batch 2048 on random
data, warm-up steps excluded (the median step), for each option of `train.embedding_optimizer`
(adam: dense gradients and Adam over the whole table, the default; sparse_adam; rowwise_adagrad)
on two vocabularies:

- small: the synthetic data set's 16 categorical fields (2-300 ids each, 509 in all) and 63
  numericals, as `prlbench preprocess synthetic` builds them;
- aliccp-like: 18 categorical fields, 1.97 M ids in all (seven fields of 100 k-500 k ids, the
  rest 3-10 k), no numericals, as Ali-CCP. Ids are drawn uniformly, so a batch touches as many
  distinct rows as it can (the hard case for the sparse options; real ids are skewed).

`--options` also takes `sparse_adam_torch`, not an option of prlbench: sparse_adam as it was
before LazyAdam (torch.optim.SparseAdam, the weight decay added to the batch rows' gradient
first), to compare the two in one run.

Each (vocabulary, preset, option) runs in a fresh process, so its peak RSS is its own. Prints
each option's speed on the large vocabulary as a ratio of dense Adam's on the small one (the
target: within 1.5x, i.e. a ratio of at least 0.67).

    python benchmarks/bench_embeddings.py                       # small + paper preset, ~5 min
    python benchmarks/bench_embeddings.py --presets paper --steps 8
    python benchmarks/bench_embeddings.py --options sparse_adam,sparse_adam_torch,rowwise_adagrad
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SYNTHETIC_VOCAB = [c + 1 for c in (10, 4, 6, 2, 24, 8, 50, 8, 8, 300, 50, 20, 6, 3, 12, 2)]
SYNTHETIC_NUMERICAL = 63
# Ali-CCP's 18 fields (101 121 122 124 125 126 127 128 129 205 206 207 216 508 509 702 853 301):
# user id, item id, shop, brand and a few cross fields large, the profile fields small.
ALICCP_VOCAB = [400_000, 100, 15, 4, 9, 5, 5, 4, 6, 500_000, 8_000, 300_000, 150_000, 10_000,
                300_000, 200_000, 100_000, 4]
VOCABS = {"small": (SYNTHETIC_VOCAB, SYNTHETIC_NUMERICAL), "aliccp": (ALICCP_VOCAB, 0)}
OPTIONS = ("adam", "sparse_adam", "rowwise_adagrad")
EXTRA_OPTIONS = ("sparse_adam_torch",)  # the old sparse_adam, for comparison (see above)


def torch_sparse_adam(params, lr: float, weight_decay: float):
    """sparse_adam before LazyAdam: torch.optim.SparseAdam, with Adam's L2 weight decay added
    to the gradient of the rows in the batch (its gradient coalesced first)."""
    import torch

    class DecayedSparseAdam(torch.optim.SparseAdam):
        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and weight_decay:
                        g = p.grad.coalesce()
                        p.grad = torch.sparse_coo_tensor(
                            g.indices(), g.values() + weight_decay * p.detach()[g.indices()[0]],
                            g.shape, is_coalesced=True, check_invariants=False)
            return super().step(closure)

    return DecayedSparseAdam(params, lr=lr)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small,paper", help="comma-separated model presets")
    p.add_argument("--options", default=",".join(OPTIONS),
                   help=f"comma-separated, of {', '.join(OPTIONS + EXTRA_OPTIONS)}")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20, help="timed steps (small preset)")
    p.add_argument("--paper-steps", type=int, default=6, help="timed steps (paper preset)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # vocab:preset:option (child)
    return p.parse_args(argv)


def measure(vocab_name: str, preset: str, option: str, args) -> dict:
    """In this process: samples/s (median step) and peak RSS of one configuration."""
    import torch

    from prlbench.config import resolve
    from prlbench.engine.optim import make_optimizer
    from prlbench.losses import LOSSES
    from prlbench.models import create_model

    if args.threads:
        torch.set_num_threads(args.threads)
    vocab, num_numerical = VOCABS[vocab_name]
    torch.manual_seed(0)
    model = create_model("mmoe", vocab_sizes=vocab, num_numerical=num_numerical, preset=preset)
    old = option == "sparse_adam_torch"
    cfg = resolve(None, {"train": {"embedding_optimizer": "sparse_adam" if old else option}}).train
    opt = make_optimizer(model, cfg)
    if old:
        opt.sparse = torch_sparse_adam(opt.sparse.param_groups[0]["params"], cfg.lr,
                                       cfg.weight_decay)
    loss_fn = LOSSES.get("bce")
    model.train()
    gen = torch.Generator().manual_seed(1)
    high = torch.tensor(vocab)
    b = args.batch_size

    def batch():
        cat = (torch.rand(b, len(vocab), generator=gen) * high).long()
        num = torch.randn(b, num_numerical, generator=gen)
        click = (torch.rand(b, generator=gen) < 0.05).float()
        return cat, num, click, click * (torch.rand(b, generator=gen) < 0.1).float()

    def step(cat, num, click, conversion):
        loss, _ = loss_fn(model(cat, num), click, conversion)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    steps = args.paper_steps if preset == "paper" else args.steps
    for _ in range(args.warmup):
        step(*batch())
    times = []
    for _ in range(steps):
        data = batch()  # drawn outside the timing: a real loader slices ready tensors
        t0 = time.perf_counter()
        step(*data)
        times.append(time.perf_counter() - t0)
    return {"vocab": vocab_name, "preset": preset, "option": option,
            "rows": sum(vocab), "samples_per_s": b / statistics.median(times),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "threads": torch.get_num_threads()}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one.split(":"), args)))
        return
    unknown = set(args.options.split(",")) - set(OPTIONS + EXTRA_OPTIONS)
    if unknown:
        raise SystemExit(f"--options: unknown {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(OPTIONS + EXTRA_OPTIONS)}")
    forwarded = [f"--batch-size={args.batch_size}", f"--steps={args.steps}",
                 f"--paper-steps={args.paper_steps}", f"--warmup={args.warmup}"]
    if args.threads:
        forwarded.append(f"--threads={args.threads}")
    results = []
    print(f"MMoE, batch {args.batch_size}, BCE; median step after {args.warmup} warm-up steps")
    print(f"{'vocabulary':>10} {'preset':>6} {'option':>17} {'table rows':>11} "
          f"{'samples/s':>10} {'peak GB':>8}")
    for preset in args.presets.split(","):
        for vocab_name in VOCABS:
            for option in args.options.split(","):
                out = subprocess.run(
                    [sys.executable, __file__, f"--one={vocab_name}:{preset}:{option}",
                     *forwarded], check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results.append(r)
                print(f"{vocab_name:>10} {preset:>6} {option:>17} {r['rows']:>11,} "
                      f"{r['samples_per_s']:>10,.0f} {r['peak_gb']:>8.2f}", flush=True)
    print("\nspeed on the Ali-CCP-like vocabulary / dense Adam's on the small one "
          "(target >= 0.67, i.e. within 1.5x):")
    for preset in args.presets.split(","):
        base = next((r["samples_per_s"] for r in results if r["preset"] == preset
                     and r["vocab"] == "small" and r["option"] == "adam"), None)
        for r in results:
            if base and r["preset"] == preset and r["vocab"] == "aliccp":
                print(f"  {preset:>6} {r['option']:>17}: {r['samples_per_s'] / base:.2f}")


if __name__ == "__main__":
    main()
