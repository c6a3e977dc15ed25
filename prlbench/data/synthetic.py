"""The built-in `synthetic` data set: processed-AliExpress layout, latent relevance, noise clicks.

It exists so that the benchmark runs with no download, and so that the question PWiseR asks can
be put where the answer is known: a click is either *genuine* (driven by relevance) or *noise*
(independent of relevance), and only genuine clicks can convert. A conversion therefore certifies
a click as genuine, which is exactly what PWiseR's conversion exposures rely on.

Schema (identical to MTReclib's processed AliExpress): `search_id` int64, `categorical_1..16`
int32 codes, `numerical_1..63` float32 in [0, 1], `click` int8, `conversion` int8 (= click and
conversion, a CTCVR label). As in the real data, `categorical_1..9` and `numerical_1..23` are
user-side and constant within a search; `categorical_10..16` and `numerical_24..63` vary per
impression.

Flags (their exact meaning):
- `rows`: training impressions, before the validation split is carved out of them (10 % of the
  searches, by `CacheBuilder`). The test split holds `rows // 4` impressions drawn from the same
  model, from a disjoint set of searches (and `search_id`s).
- `click_rate`: P(click) over all impressions (noise clicks included).
- `conversion_rate`: P(conversion | click) over all clicks, so P(click and conversion) is about
  `click_rate * conversion_rate`. It must be below `1 - noise_rate` (noise clicks never convert).
- `noise_rate`: the share of clicks that are noise clicks.
- `seed`: everything (the "world" tables and every row) comes from `np.random.default_rng(seed)`;
  the same flags give byte-identical files (on one platform and numpy version).

Generative model (vectorised numpy; each component below has unit variance before weighting):
1. Searches of 10-20 impressions (uniform); one user per search: user fields `categorical_1..9`
   drawn from Zipf-like laws p(k) ~ (k + 2)^-0.8; user numericals `numerical_1..23` drawn per
   search.
2. Items: `categorical_10` is an item id (300, Zipf popularity); its category `categorical_11`
   (50) and brand `categorical_12` (20) are fixed functions of the item; `categorical_13..15` are
   per-impression fields; `categorical_16` is a binary "clickbait" flag (P = 0.2). Numericals are
   uniform on a 1/1000 grid of [0, 1], many with a point mass at 0 (like the real data's many
   zeros); `numerical_63` is the position in the search (rank / 20).
3. Latent relevance r = 2 x (the sum below); the 2 sets how learnable the clicks are:
     0.35 w1[categorical_1] + 0.35 w5[categorical_5]                            (user marginals)
     + 0.6 wq[item] + 0.35 wc[category] + 0.25 wb[brand]                        (item marginals)
     + 0.7 <U[categorical_7], V[category]>      (user x item interaction, 4-dim latent vectors)
     + 0.4 sin(2 pi x3) + 0.4 (x24 - 1/2)^2 + 0.4 (x30 - 1/2)(x41 - 1/2)   (smooth numericals,
       each standardised; xj = numerical_j)
     + 0.35 o_search                                     (a per-search offset, never observed),
   all lookup tables and o ~ N(0, 1). `categorical_16` and `numerical_63` drive noise clicks only,
   `categorical_13` and `numerical_55` conversions only; every other field is pure noise.
4. Genuine click ~ Bernoulli(g), g = sigmoid(a + r).
5. Noise click ~ Bernoulli(q), q = min(1, q0 (1 + 2 clickbait) exp(-1.5 numerical_63)): visible
   in the features but independent of r. click = genuine OR noise; a click whose genuine draw
   fired counts as genuine.
6. Conversion ~ Bernoulli(h) on a genuine click only, h = sigmoid(b + 0.5 r + 1.5 (1/2 - x55)
   + 0.5 ws[categorical_13]) (x55 plays a price, categorical_13 a shipping option).
7. a, b, q0 are calibrated by bisection on the expected probabilities of (up to) the first
   131,072 training rows so that E[g] = (1 - noise_rate) click_rate, E[q (1 - g)] =
   noise_rate click_rate and E[g h] = conversion_rate click_rate; the realised rates match the
   flags up to sampling noise. Rows are drawn and written in chunks of 2^20 (bounded memory).

The true per-row probabilities go to `{split}.side.parquet` (never into the features):
`p_click` = g + q - g q, `p_click_genuine` = g, `p_ctcvr` = g h, `genuine` (int8: the click was
genuine). They are row-aligned with `{split}.parquet`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from prlbench.data import variants
from prlbench.data.cache import CacheBuilder, aliexpress_schema, dataset_dir
from prlbench.errors import ConfigError

GENERATOR_VERSION = 1
SEARCH_SIZE = (10, 20)
# Cardinalities of categorical_1..16 (user fields 1..9, item fields 10..16).
CARDINALITY = (10, 4, 6, 2, 24, 8, 50, 8, 8, 300, 50, 20, 6, 3, 12, 2)
N_USER_NUM, N_ITEM_NUM = 23, 40
LATENT_DIM = 4
CLICKBAIT_P = 0.2
TABLE_SIZE = 1 << 16
QUANTUM = 1000  # numericals are multiples of 1 / QUANTUM
CALIBRATION_ROWS = 131_072
CHUNK_ROWS = 1 << 20  # rows drawn and staged at a time (~0.5 GB of memory)
# Weights of the unit-variance relevance components (documented in the module docstring).
W_USER, W_ITEM, W_CAT, W_BRAND, W_INTER, W_NUM, W_OFFSET = 0.35, 0.6, 0.35, 0.25, 0.7, 0.4, 0.35
# Overall scale of r, set so that a small MLP (8-dim embeddings, 128-64 MLP, Adam 1e-3, batch
# 2048) reaches a test CTR AUC of about 0.67-0.69 and CTCVR AUC of about 0.80 after 4 epochs
# on 200k rows (seeds 0 and 1); the true p_click scores about 0.82-0.83, p_ctcvr about 0.97.
SIGNAL = 2.0
# Conversion model: h = sigmoid(b + CONV_R r + CONV_PRICE (1/2 - x55) + CONV_SHIP ws[cat13]).
CONV_R, CONV_PRICE, CONV_SHIP = 0.5, 1.5, 0.5
# 0-based column indices of the informative numericals within all 63.
X_SIN, X_QUAD, X_PROD_A, X_PROD_B, X_PRICE, X_POSITION = 2, 23, 29, 40, 54, 62
_INFORMATIVE_NUM = (X_SIN, X_QUAD, X_PROD_A, X_PROD_B, X_PRICE, X_POSITION)


_K = variants.KNOBS  # the knobs' one home: names, defaults, help


def preprocess_synthetic(data_dir: Path, *, rows: int = _K["rows"].default,
                         seed: int = _K["seed"].default,
                         click_rate: float = _K["click_rate"].default,
                         conversion_rate: float = _K["conversion_rate"].default,
                         noise_rate: float = _K["noise_rate"].default, progress: bool = True,
                         dataset: str = "synthetic") -> dict:
    """Generate the synthetic data set into `data_dir/synthetic` and return its manifest.

    `dataset` a variant such as "synthetic[noise=0.5]" (prlbench.data.variants): generated with
    the options its name says (the others at their defaults) into its own folder
    (`data_dir/synthetic-noise0.5`), the manifest's "dataset" its canonical id and its params
    the knobs too; an option also given here is refused (it belongs in the brackets), so that
    a variant's folder always holds that variant."""
    options = {"rows": rows, "seed": seed, "click_rate": click_rate,
               "conversion_rate": conversion_rate, "noise_rate": noise_rate}
    if variants.base_name(dataset) != "synthetic":
        raise ConfigError(f"preprocess_synthetic generates synthetic or a variant of it, not "
                          f"{dataset!r}")
    dataset = variants.canonical(dataset)
    if variants.is_variant(dataset):  # its options come from its name, and from there only
        given = {k: v for k, v in options.items() if v != _K[k].default}
        if given:
            shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
            raise ConfigError(f"{dataset} takes its options from its name (the others at their "
                              f"defaults), but {shown} was given: write them in its brackets")
        options = variants.params(dataset)
    variants.check_options(**options)
    rows, seed = options["rows"], options["seed"]
    click_rate, conversion_rate = options["click_rate"], options["conversion_rate"]
    noise_rate = options["noise_rate"]
    start = time.perf_counter()
    rates = {"click_rate": click_rate, "conversion_rate": conversion_rate,
             "noise_rate": noise_rate}
    gen = _Generator(np.random.default_rng(seed), rates)
    params = {"generator_version": GENERATOR_VERSION, "rows": rows, "test_rows": rows // 4,
              "seed": seed, **rates, **variants.manifest_params(dataset)}
    out = dataset_dir(data_dir, dataset)
    with CacheBuilder(out, aliexpress_schema(), min_count=0) as builder:
        for split, n in (("train", rows), ("test", rows // 4)):
            params[f"realised_{split}"] = gen.write(builder, split, n, seed)
            _say(progress, f"{dataset}: {split} {n:,} rows drawn")
        params["calibrated"] = gen.cal
        manifest = builder.finish(dataset=dataset, params=params)
    _say(progress, f"{dataset}: written to {out} in {time.perf_counter() - start:.1f} s")
    return manifest


class _Generator:
    """Draws splits chunk by chunk (bounded memory), all from one generator, in a fixed order:
    the world, then the train chunks, then the test chunks."""

    def __init__(self, rng: np.random.Generator, rates: dict) -> None:
        self.rng, self.rates = rng, rates
        self.world = _World(rng)
        self.next_id = 0            # search ids never repeat, across chunks and splits
        self.cal: dict | None = None

    def write(self, builder: CacheBuilder, split: str, n: int, seed: int) -> dict:
        """Draw `n` rows of `split` into `builder`; returns the realised rates."""
        counts = np.zeros(4, np.int64)      # rows, clicks, conversions, genuine clicks
        for first in range(0, n, CHUNK_ROWS):
            parts = _draw_split(self.rng, self.world, min(CHUNK_ROWS, n - first),
                                id_offset=self.next_id)
            self.next_id = int(parts["search_id"][-1]) + 1
            if self.cal is None:            # calibrated once, on the first train chunk
                self.cal = _calibrate(parts, **self.rates)
            columns, side = _labels(parts, self.cal)
            builder.add(split, columns, source=f"synthetic {split} (seed {seed})",
                        first_line=first + 1, side=side)
            counts += [len(side["genuine"]), columns["click"].sum(),
                       columns["conversion"].sum(), side["genuine"].sum()]
        return _realised(*counts.tolist())


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


class _World:
    """The fixed tables of the model (drawn once per seed, shared by train and test)."""

    def __init__(self, rng: np.random.Generator) -> None:
        n = lambda size: rng.standard_normal(size).astype(np.float32)  # noqa: E731
        self.popularity = [_sampling_table(c) for c in CARDINALITY]
        self.w_user1, self.w_user5 = n(CARDINALITY[0]), n(CARDINALITY[4])
        self.w_item, self.w_cat, self.w_brand = n(CARDINALITY[9]), n(CARDINALITY[10]), n(
            CARDINALITY[11])
        self.w_ship = n(CARDINALITY[12])
        # Entries N(0, 1/sqrt(k)): the k-term dot product then has unit variance.
        scale = LATENT_DIM ** -0.25
        self.u = n((CARDINALITY[6], LATENT_DIM)) * scale
        self.v = n((CARDINALITY[10], LATENT_DIM)) * scale
        self.item_category = rng.integers(0, CARDINALITY[10], CARDINALITY[9])
        self.item_brand = rng.integers(0, CARDINALITY[11], CARDINALITY[9])
        # Share of exact zeros per numerical (the informative ones have none).
        zeros = rng.uniform(0.0, 0.6, N_USER_NUM + N_ITEM_NUM).astype(np.float32)
        zeros[list(_INFORMATIVE_NUM)] = 0.0
        self.zero_share = zeros


def _sampling_table(cardinality: int) -> np.ndarray:
    """A table of TABLE_SIZE values whose uniform draw follows p(k) ~ (k + 2)^-0.8.

    Indexing it with uniform integers samples the Zipf-like law (rounded to 1 / TABLE_SIZE)
    about 20 times faster than `rng.choice(p=...)`.
    """
    p = 1.0 / (np.arange(cardinality) + 2.0) ** 0.8
    cdf = np.cumsum(p / p.sum())
    return np.minimum(np.searchsorted(cdf, (np.arange(TABLE_SIZE) + 0.5) / TABLE_SIZE),
                      cardinality - 1).astype(np.int64)


def _draw(rng: np.random.Generator, table: np.ndarray, n: int) -> np.ndarray:
    return table[rng.integers(0, TABLE_SIZE, n, np.uint16)]


def _draw_split(rng: np.random.Generator, world: _World, n: int, *, id_offset: int) -> dict:
    """Features and latent quantities of `n` impressions (no labels yet)."""
    sizes = _search_sizes(rng, n)
    search = np.repeat(np.arange(len(sizes)), sizes)             # [n] search index
    starts = np.cumsum(sizes) - sizes
    position = np.arange(n) - starts[search]                      # [n] rank in the search
    cats = _categoricals(rng, world, len(sizes), search)          # [16, n] int64
    nums = _numericals(rng, world, len(sizes), search)            # [63, n] float32
    nums[X_POSITION] = position / 20.0
    offset = rng.standard_normal(len(sizes)).astype(np.float32)[search]
    return {"search_id": search.astype(np.int64) + id_offset, "cats": cats, "nums": nums,
            "r": _relevance(world, cats, nums, offset), "ship": world.w_ship[cats[12]],
            "u": rng.random((3, n), np.float32)}                  # [3, n] label uniforms


def _search_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    lo, hi = SEARCH_SIZE
    sizes = rng.integers(lo, hi + 1, n // lo + 1)
    ends = np.cumsum(sizes)
    k = int(np.searchsorted(ends, n))                             # first search reaching n
    sizes = sizes[: k + 1].copy()
    sizes[-1] -= ends[k] - n                                      # the last search is cut at n
    return sizes


def _categoricals(rng: np.random.Generator, world: _World, searches: int,
                  search: np.ndarray) -> np.ndarray:
    n = len(search)
    out = np.empty((len(CARDINALITY), n), np.int64)
    for f in range(9):                                            # user side: one draw a search
        out[f] = _draw(rng, world.popularity[f], searches)[search]
    item = _draw(rng, world.popularity[9], n)
    out[9], out[10], out[11] = item, world.item_category[item], world.item_brand[item]
    for f in (12, 13, 14):
        out[f] = _draw(rng, world.popularity[f], n)
    out[15] = rng.random(n, np.float32) < CLICKBAIT_P
    return out


def _numericals(rng: np.random.Generator, world: _World, searches: int,
                search: np.ndarray) -> np.ndarray:
    nums = np.empty((N_USER_NUM + N_ITEM_NUM, len(search)), np.float32)    # [63, n]
    user = rng.random((N_USER_NUM, searches), np.float32)         # user side: one draw a search
    for j in range(N_USER_NUM):                                   # row by row: 4x faster take
        np.take(user[j], search, out=nums[j])
    rng.random(out=nums[N_USER_NUM:], dtype=np.float32)
    # A point mass z at 0, uniform above it (one uniform draw per value), on a 1/1000 grid
    # like the real data's few decimals (which also keeps the Parquet files small and fast).
    z = world.zero_share[:, None]
    nums -= z
    nums *= QUANTUM / (1 - z)
    np.maximum(nums, 0, out=nums)
    np.rint(nums, out=nums)
    nums /= QUANTUM
    return nums


def _relevance(world: _World, cats: np.ndarray, nums: np.ndarray,
               offset: np.ndarray) -> np.ndarray:
    """Latent relevance r [n] (see step 3 of the module docstring)."""
    r = W_USER * (world.w_user1[cats[0]] + world.w_user5[cats[4]])
    r += W_ITEM * world.w_item[cats[9]] + W_CAT * world.w_cat[cats[10]]
    r += W_BRAND * world.w_brand[cats[11]]
    r += W_INTER * np.einsum("nk,nk->n", world.u[cats[6]], world.v[cats[10]])
    # Standardised smooth terms of uniform inputs (variances 1/2, 1/180 and 1/144).
    r += W_NUM * math.sqrt(2) * np.sin(2 * np.pi * nums[X_SIN])
    r += W_NUM * math.sqrt(180) * ((nums[X_QUAD] - 0.5) ** 2 - 1 / 12)
    r += W_NUM * 12 * (nums[X_PROD_A] - 0.5) * (nums[X_PROD_B] - 0.5)
    r += W_OFFSET * offset
    return (SIGNAL * r).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _noise_weight(parts: dict) -> np.ndarray:
    clickbait = parts["cats"][15].astype(np.float32)
    return (1 + 2 * clickbait) * np.exp(-1.5 * parts["nums"][X_POSITION])


def _conversion_logit(parts: dict) -> np.ndarray:
    price = parts["nums"][X_PRICE]
    return CONV_R * parts["r"] + CONV_PRICE * (0.5 - price) + CONV_SHIP * parts["ship"]


def _bisect(f, lo: float, hi: float, target: float, iters: int = 60) -> float:
    """The x in [lo, hi] with f(x) = target, for f increasing (clamped at the ends)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def _calibrate(train: dict, click_rate: float, conversion_rate: float,
               noise_rate: float) -> dict:
    """Intercepts a, b and noise scale q0 (step 7 of the module docstring), in float64."""
    m = CALIBRATION_ROWS
    r = train["r"][:m].astype(np.float64)
    weight = _noise_weight(train)[:m].astype(np.float64)
    conv_logit = _conversion_logit(train)[:m].astype(np.float64)
    a = _bisect(lambda a: _sigmoid(a + r).mean(), -30, 30, (1 - noise_rate) * click_rate)
    g = _sigmoid(a + r)
    noise = lambda q0: (np.minimum(1, q0 * weight) * (1 - g)).mean()  # noqa: E731
    q0 = _bisect(noise, 0, 1 / weight.min(), noise_rate * click_rate) if noise_rate else 0.0
    b = _bisect(lambda b: (g * _sigmoid(b + conv_logit)).mean(), -30, 30,
                conversion_rate * click_rate)
    return {"a": float(a), "b": float(b), "q0": float(q0)}


def _labels(parts: dict, cal: dict) -> tuple[dict, dict]:
    """The schema's columns and the side file's truth for one split (steps 4-6)."""
    u_genuine, u_noise, u_conv = parts["u"]
    g = _sigmoid(cal["a"] + parts["r"]).astype(np.float32)
    q = np.minimum(1, cal["q0"] * _noise_weight(parts)).astype(np.float32)
    h = _sigmoid(cal["b"] + _conversion_logit(parts)).astype(np.float32)
    genuine = u_genuine < g
    click = genuine | (u_noise < q)
    conversion = genuine & (u_conv < h)
    columns = {"search_id": parts["search_id"]}
    columns.update({f"categorical_{i + 1}": c for i, c in enumerate(parts["cats"])})
    columns.update({f"numerical_{i + 1}": x for i, x in enumerate(parts["nums"])})
    columns["click"], columns["conversion"] = click.view(np.int8), conversion.view(np.int8)
    side = {"p_click": g + q - g * q, "p_click_genuine": g, "p_ctcvr": g * h,
            "genuine": genuine.view(np.int8)}
    return columns, side


def _realised(rows: int, clicks: int, conversions: int, genuine: int) -> dict:
    """Realised rates of one split (before the validation carve), for the manifest; the
    per-click rates are None when the split has no click."""
    per_click = (lambda k: k / clicks) if clicks else (lambda k: None)  # noqa: E731
    return {"click_rate": clicks / rows, "conversion_rate": per_click(conversions),
            "noise_rate": per_click(clicks - genuine)}
