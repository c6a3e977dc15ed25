"""Reference implementations the tests (and `benchmarks/`) compare the library against, and
test-only helpers. Nothing in `prlbench` uses them, so they live here rather than in the package.

- `delong_slow`: the textbook O(m * n) DeLong test, the reference for `prlbench.stats.fast_delong`;
- `paired_bootstrap_auc_diff` (`BootstrapResult`): a paired, class-stratified percentile
  bootstrap CI of an AUC difference over rows (O(n) per replicate);
- `safe_extract`: `prlbench.data.download.extract_archive` returning the extracted paths;
- `overlapping_texts`: drawn texts of a matplotlib figure that overlap or are cut off.

Test modules import them as `from _reference import ...`: with pytest's default import mode the
folder of the test files (`tests/`, which has no `__init__.py`) is put on `sys.path`, whether
the whole suite or a single file is run. A benchmark puts `tests/` on `sys.path` itself.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prlbench.stats import _checks
from prlbench.stats._sort import argsort_scores
from prlbench.stats.bootstrap import _check_boot
from prlbench.stats.delong import DelongResult, _result


# ------------------------------------------------------------------------------- DeLong
def delong_slow(y, s1, s2) -> DelongResult:
    """Textbook DeLong, DeLong & Clarke-Pearson (1988), with the explicit m x n kernel
    psi(x, y) = 1 if x > y, 1/2 if equal, else 0. Returns the same numbers as `fast_delong`
    up to rounding.

    For tests on small data only (memory and time are O(m * n)).
    """
    pos = _checks.labels(y)
    values = []
    for name, s in (("s1", s1), ("s2", s2)):
        s = _checks.scores(s, len(pos), name)
        x, z = s[pos], s[~pos]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # [m, n]
        v = np.empty(len(pos))
        v[pos] = psi.mean(axis=1) if psi.shape[1] else np.nan  # V10: one per positive
        v[~pos] = psi.mean(axis=0) if psi.shape[0] else np.nan  # V01: one per negative
        values.append(v)
    return _result(pos, *values)


# ---------------------------------------------------------------- row-level AUC bootstrap
@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate on the full data and the percentile interval [lo, hi]."""

    diff: float
    lo: float
    hi: float


def paired_bootstrap_auc_diff(y, s1, s2, *, n_boot: int = 1000, seed: int = 0,
                              alpha: float = 0.05) -> BootstrapResult:
    """Paired, class-stratified percentile bootstrap CI of AUC(s1) - AUC(s2).

    Each replicate redraws the positives among the positives and the negatives among the
    negatives (so both classes are always present and their counts fixed), the same rows for
    both scores. Exact and O(n) per replicate: the scores are sorted once and a replicate only
    re-weights the rows by how often they were drawn. Cost O(n log n + n_boot * n), about
    50 ms per replicate per million rows on one core: ~10 s for 1 M rows and 200 replicates,
    ~8 min for 10 M rows and 1000 (use fewer replicates or fast_delong there).
    One class only -> all nan.
    """
    _check_boot(n_boot, alpha)
    pos = _checks.labels(y)
    scores = [_checks.scores(s, len(pos), name) for name, s in (("s1", s1), ("s2", s2))]
    m = int(np.count_nonzero(pos))
    n = len(pos) - m
    if m == 0 or n == 0:
        return BootstrapResult(float("nan"), float("nan"), float("nan"))
    ranked = [_Ranked(s[pos], s[~pos]) for s in scores]
    ones_pos, ones_neg = np.ones(m), np.ones(n)
    diff = ranked[0].auc(ones_pos, ones_neg, m, n) - ranked[1].auc(ones_pos, ones_neg, m, n)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        # How often each positive / negative is drawn in this replicate (within its class).
        w_pos = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        w_neg = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        boots[b] = ranked[0].auc(w_pos, w_neg, m, n) - ranked[1].auc(w_pos, w_neg, m, n)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(float(diff), float(lo), float(hi))


class _Ranked:
    """One score, sorted once; then the AUC under any row weights costs O(n).

    Stores where each positive falls among the sorted negatives: ``below`` negatives strictly
    lower and ``upto`` negatives lower or tied (ties count 1/2).
    """

    def __init__(self, s_pos: np.ndarray, s_neg: np.ndarray):
        self.neg_order = argsort_scores(s_neg)
        self.pos_order = argsort_scores(s_pos)
        neg_sorted = s_neg[self.neg_order]
        pos_sorted = s_pos[self.pos_order]  # sorted queries keep searchsorted cache-friendly
        self.below = np.searchsorted(neg_sorted, pos_sorted, side="left")
        upto = np.searchsorted(neg_sorted, pos_sorted, side="right")
        self.upto = None if np.array_equal(upto, self.below) else upto  # None: no ties

    def auc(self, w_pos: np.ndarray, w_neg: np.ndarray, m: int, n: int) -> float:
        """AUC when positive i counts w_pos[i] times and negative j w_neg[j] times.

        The weights sum to m (positives) and n (negatives), as in the data.
        """
        cum = np.empty(len(w_neg) + 1)
        cum[0] = 0.0
        np.cumsum(w_neg[self.neg_order], out=cum[1:])  # cum[k]: weight of the k lowest negatives
        credit = 2 * cum[self.below] if self.upto is None else cum[self.below] + cum[self.upto]
        # (a * b).sum(), not np.dot: BLAS threads make dot 20x slower on a busy machine.
        return float((w_pos[self.pos_order] * credit).sum() / (2.0 * m * n))


# --------------------------------------------------------------------------- extraction
def safe_extract(archive: Path, dest: Path, *, max_bytes: int | None = None,
                 progress: bool = False) -> list[Path]:
    """Extract a zip or tar archive into `dest`; every entry or none. Returns the files.
    `max_bytes`: the cap on the extracted bytes (None: the library's MAX_EXTRACT_BYTES)."""
    from prlbench.data import download

    dest = Path(dest)
    cap = download.MAX_EXTRACT_BYTES if max_bytes is None else max_bytes
    facts = download.extract_archive(Path(archive), dest, max_bytes=cap, progress=progress)
    return [dest / rel for rel in facts]


# -------------------------------------------------------------------------------- plots
def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts of `fig` (titles, axis and tick labels, legends) whose boxes
    overlap by more than a pixel each way, after layout, and texts cut off by its edge."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in _drawn_texts(fig) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    out = []
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if w > 1 and h > 1:
            out.append((a, b))
    # A text cut off by the figure's edge is reported as overlapping "<figure edge>".
    edge = fig.bbox
    for text, b in boxes:
        if b.x0 < edge.x0 - 1 or b.y0 < edge.y0 - 1 or b.x1 > edge.x1 + 1 or b.y1 > edge.y1 + 1:
            out.append((text, "<figure edge>"))
    return out


def _drawn_texts(fig) -> list:
    out = []
    for f in _figures(fig):  # suptitles and legends of the figure and its subfigures
        out += list(f.texts)
        for leg in f.legends:
            out += [*leg.get_texts(), leg.get_title()]
    for ax in fig.get_axes():
        out += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            out += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
        for axis in (ax.xaxis, ax.yaxis):
            # Tick labels outside the view are not drawn: leave them out.
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(1.0, abs(hi - lo))
            locs = axis.get_majorticklocs()
            out += [t.label1 for t, loc in zip(axis.get_major_ticks(len(locs)), locs)
                    if lo - tol <= loc <= hi + tol]
    return list({id(t): t for t in out}.values())


def _figures(fig) -> list:
    return [fig] + [g for sf in fig.subfigs for g in _figures(sf)]


def pdf_width_in(path: Path) -> float:
    """The width of a one-page PDF's page (its MediaBox), in inches, to 2 decimals."""
    import re

    box = re.search(rb"/MediaBox \[ *([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) *\]",
                    Path(path).read_bytes())
    assert box, f"{path}: no MediaBox"
    return round((float(box.group(3)) - float(box.group(1))) / 72, 2)
