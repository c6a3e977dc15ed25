"""Cost of each registered loss against one training step of the model it trains (not a test).

    python benchmarks/bench_losses.py [--batch 2048] [--repeats 100] [--threads 2]

For two label mixes, AliExpress-like (2 % clicks, 0.1 % conversions: |P| x |C| pairs are few)
and KuaiRand-like (45 % clicks, 1.6 % conversions: clicks x non-clicks is ~10^6 pairs), prints
the median milliseconds of forward + backward of every registered loss on the two heads'
logits, the extra cost of its ranking term over `bce` alone, and that extra as a share of one
MMoE small-preset training step (forward, bce, backward, Adam) at the same batch size, measured
in the same run. The last row times the textbook autograd form of the all-pairs logistic sum,
softplus(neg[None, :] - pos[:, None]).sum(), on the clicks x non-clicks pairs, for reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prlbench.losses import LOSSES
from prlbench.models import create_model

MIXES = {"AliExpress-like": (0.02, 0.001), "KuaiRand-like": (0.45, 0.016)}


def labels(batch: int, click_rate: float, conversion_rate: float, g: torch.Generator):
    """Exactly round(rate * batch) clicks and conversions (conversions among the clicks)."""
    n_click = max(1, round(click_rate * batch))
    n_conv = max(1, round(conversion_rate * batch))
    order = torch.randperm(batch, generator=g)
    click, conversion = torch.zeros(batch), torch.zeros(batch)
    click[order[:n_click]] = 1.0
    conversion[order[:n_conv]] = 1.0
    return click, conversion


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def model_step_ms(batch: int, click: torch.Tensor, conversion: torch.Tensor,
                  repeats: int) -> float:
    """One MMoE small-preset step on random features: 16 fields of 1,000 ids, 63 numericals."""
    g = torch.Generator().manual_seed(1)
    model = create_model("mmoe", vocab_sizes=[1000] * 16, num_numerical=63, preset="small")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cat = torch.randint(0, 1000, (batch, 16), generator=g)
    num = torch.randn(batch, 63, generator=g)
    bce = LOSSES.get("bce")

    def step():
        total, _ = bce(model(cat, num), click, conversion)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return median_ms(step, max(20, repeats // 5))


def loss_ms(name: str, batch: int, click, conversion, repeats: int, g) -> float:
    fn = LOSSES.get(name)
    ctr = torch.randn(batch, generator=g).requires_grad_()
    ctcvr = (torch.randn(batch, generator=g) - 3).requires_grad_()

    def run():
        total, _ = fn({"ctr": ctr, "ctcvr": ctcvr}, click, conversion)
        total.backward()

    return median_ms(run, repeats)


def naive_pairs_ms(batch: int, click, repeats: int, g) -> float:
    x = torch.randn(batch, generator=g).requires_grad_()
    pos_mask = click > 0.5

    def run():
        F.softplus(x[~pos_mask][None, :] - x[pos_mask][:, None]).mean().backward()

    return median_ms(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.repeats} forward + backward")
    for mix, (click_rate, conversion_rate) in MIXES.items():
        g = torch.Generator().manual_seed(0)
        click, conversion = labels(args.batch, click_rate, conversion_rate, g)
        n_click, n_conv = int(click.sum()), int(conversion.sum())
        step = model_step_ms(args.batch, click, conversion, args.repeats)
        print(f"\n{mix}: {n_click} clicks, {n_conv} conversions; "
              f"{n_click * (args.batch - n_click):,} click x non-click pairs; "
              f"MMoE small step {step:.1f} ms")
        print(f"  {'loss':<20} {'fwd+bwd ms':>10} {'term ms':>8} {'term / step':>11}")
        base = loss_ms("bce", args.batch, click, conversion, args.repeats, g)
        for name in LOSSES.names():
            ms = base if name == "bce" else loss_ms(name, args.batch, click, conversion,
                                                      args.repeats, g)
            extra = max(ms - base, 0.0)
            share = "" if name == "bce" else f"{extra / step:11.1%}"
            print(f"  {name:<20} {ms:10.3f} {extra if name != 'bce' else 0:8.3f} {share}")
        for head in ("both",):
            fn = LOSSES.get("ranknet")
            ctr = torch.randn(args.batch, generator=g).requires_grad_()
            ctcvr = torch.randn(args.batch, generator=g).requires_grad_()

            def run():
                fn({"ctr": ctr, "ctcvr": ctcvr}, click, conversion, head=head)[0].backward()

            ms = median_ms(run, args.repeats)
            print(f"  {'ranknet[head=both]':<20} {ms:10.3f} {max(ms - base, 0):8.3f} "
                  f"{max(ms - base, 0) / step:11.1%}")
        naive = naive_pairs_ms(args.batch, click, args.repeats, g)
        print(f"  (autograd softplus over the click x non-click pairs, the textbook form: "
              f"{naive:.3f} ms)")


if __name__ == "__main__":
    main()
