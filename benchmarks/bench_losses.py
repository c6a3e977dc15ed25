"""Timing of the pairwise loss terms (not a test; takes a few seconds).

    python benchmarks/bench_losses.py [--batch 2048] [--conversions 2] [--repeats 200]

Prints the median milliseconds of one forward + backward of `pwiser_loss` and `ranknet_loss`
on a batch of ``--batch`` logits with ``--conversions`` conversions and a 5 % click rate (the
shape of a real training batch: few conversions, many non-clicks; RankNet pairs every click with
every non-click, so it has far more pairs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prlbench.losses import pwiser_loss, ranknet_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--conversions", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    click = (torch.rand(args.batch, generator=g) < 0.05).float()
    conversion = torch.zeros(args.batch)
    conversion[torch.nonzero(click).flatten()[:args.conversions]] = 1.0
    print(f"batch {args.batch}, {int(click.sum())} clicks, {int(conversion.sum())} conversions, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    terms = (("pwiser_loss", lambda x: pwiser_loss(x, click, conversion)),
             ("ranknet_loss", lambda x: ranknet_loss(x, click)))  # clicks vs non-clicks
    for name, fn in terms:
        times = []
        for _ in range(args.repeats):
            logit = torch.randn(args.batch, generator=g, requires_grad=True)
            start = time.perf_counter()
            fn(logit).backward()
            times.append(time.perf_counter() - start)
        print(f"{name:<14} forward + backward {statistics.median(times) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
