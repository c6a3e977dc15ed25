"""The prose beside every table: the caption, generated from the summary (what the cells are,
the seeds, the CI, the test and correction, the equivalence margins, the settings of every
loss, the data sets' label rules), and the display names of losses, arms, models and data
sets. Every number in it is computed from the summary.
"""

from __future__ import annotations

import numpy as np

from prlbench.data.datasets import DATASETS
from prlbench.metrics import METRICS
from prlbench.report.analysis import Summary

PARAM_ORDER = ("lam", "alpha", "m1", "m2", "phi", "score", "head", "norm", "temperature")
PARAM_NAMES = {"lam": "λ", "phi": "φ", "score": "s", "alpha": "α", "temperature": "T"}
VALUE_NAMES = {"squared_hinge": "squared hinge", "prob": "probability"}
TEST_NAMES = {"twolevel": "two-level t-test", "wilcoxon": "Wilcoxon signed-rank",
              "ttest": "paired t-test", "bootstrap": "two-level bootstrap"}
# What each test holds fixed or counts, after its name in the caption.
TEST_HOW = {
    "twolevel": "(t = Δ̄ / √(s²/S + G) on Satterthwaite's df: the CI's model, seeds and test set)",
    "bootstrap": "(from the CI's replicates, the two-level t beyond what they resolve)",
    "wilcoxon": "over seeds, conditional on this test set (its noise is not counted)",
    "ttest": "over seeds, conditional on this test set (its noise is not counted)",
}
CORRECTION_NAMES = {"holm": "Holm correction", "bh": "Benjamini-Hochberg correction"}


def caption(summary: Summary, metrics: tuple[str, ...], kind: str) -> str:
    """Plain-text (Unicode) caption; every number is computed from the summary."""
    base = loss_name(summary.baseline)
    what = "AUC" if kind == "auc" else "logloss (lower is better)"
    relaimpr = (f"; in parentheses RelaImpr relative to {base}, ((AUC − 0.5) / (AUC_{base} − 0.5)"
                " − 1) × 100 %." if kind == "auc" else ".")
    if summary.cells["n"].max() <= 1:
        parts = [f"{_split_text(summary)} {what} of one run per cell (seed "
                 f"{seed_list(summary.seeds)}): no "
                 "std, CI or test with one seed.", f"Δ: difference to {base}{relaimpr}"]
    else:
        parts = [f"{_split_text(summary)} {what}, mean ± std over {_seed_text(summary)}.",
                 f"Δ: mean paired difference to {base} over seeds with "
                 f"{ci_text(summary, metrics)}{relaimpr}"]
    if summary.cells["is_baseline"].all():  # nothing to take a difference to
        parts = [parts[0].replace(": no std, CI or test with one seed.", ": no std with one "
                                  "seed.")]
    parts.append(test_text(summary, base, metrics))
    if kind == "auc":
        c = summary.cells[~summary.cells["is_baseline"] & summary.cells["metric"].isin(metrics)]
        if (c["base_mean_paired"] <= 0.5).any():
            parts.append(f"RelaImpr is left out where {base}'s AUC is 0.5 or below (no lift over "
                         "random to compare against).")
    parts.append("Bold: best mean per data set and column.")
    parts.append(clipped_text(summary, metrics))
    if kind == "logloss":
        parts.append(_cvr_logloss_text(summary))
    parts.append(tuning_text(summary))
    parts.append(_embedding_text(summary))
    if not summary.delong.empty and kind == "auc":  # DeLong compares AUCs only
        parts.append(f"DeLong's test on each seed's test predictions is in {_cells(summary)}; "
                     "it does not "
                     "set the marker, because it ignores training randomness.")
    parts += [settings_text(summary, arm) for arm in sorted(summary.settings)
              if arm != summary.baseline and summary.settings[arm]]
    shown = set(summary.cells["dataset"])
    parts += [f"{dataset_name(d)}: {note}." for d, note in summary.data_notes.items()
              if d in shown]
    return " ".join(p for p in parts if p)


def ci_text(summary: Summary, metrics: tuple[str, ...]) -> str:
    """Which CI the Δ rows show: two-level (seeds and test rows resampled) where every
    compared cell has it, else seed-only, or a mix (each cell's `ci` in cells.csv)."""
    conf = f"{(1 - summary.alpha) * 100:g} %"
    kind = ci_kind(summary, metrics)
    common = f"expanded percentile, {summary.n_boot:,} resamples"
    if kind == "two-level":
        return (f"{conf} two-level CI: the crossed seeds × test-rows model, variance s²/S + G "
                "(s²: the seeds' variance of Δ; G: the test-set noise all seeds share, from each "
                f"test row's influence on both losses' metric), drawn as {summary.n_boot:,} seed "
                "resamples plus a normal test-set term (expanded percentile interval on "
                f"Satterthwaite's df; the seed-only CI is in {_cells(summary)})")
    if kind == "seeds":
        return (f"{conf} bootstrap CI of the per-seed differences ({common}; the test rows "
                "held fixed)")
    return (f"{conf} two-level CI (seeds × test rows, crossed model) where the predictions "
            f"were there, over seeds only elsewhere (each cell's ci in {_cells(summary)}; "
            f"{common})")


def ci_kind(summary: Summary, metrics: tuple[str, ...] | None = None) -> str:
    """The CI the compared cells (of `metrics`, default all) show: "two-level" where every one
    has it, "seeds" where none does, else "mixed" (each cell's `ci` column says)."""
    c = summary.cells[~summary.cells["is_baseline"]]
    if metrics is not None:
        c = c[c["metric"].isin(metrics)]
    kinds = set(c["ci"]) - {""} if "ci" in c else set()
    return "two-level" if kinds == {"two-level"} else "seeds" if kinds <= {"seeds"} else "mixed"


def ci_name(summary: Summary, metrics: tuple[str, ...] | None = None) -> str:
    """The CI the Δs show (of `metrics`, default all), in a few words, for plots and the
    short captions."""
    return {"two-level": "two-level CI (seeds and test set)",
            "seeds": "bootstrap CI over seeds",
            "mixed": f"CI (two-level or over seeds, {_cells(summary)})"}[
        ci_kind(summary, metrics)]


def _cvr_logloss_text(summary: Summary) -> str:
    """Why CVR logloss is missing for models without a probability p_cvr."""
    from prlbench.report.analysis import _cvr_is_probability

    lacking = [m for m in dict.fromkeys(summary.runs["model"]) if not _cvr_is_probability(m)]
    if not lacking:
        return ""
    names = ", ".join(model_name(m) for m in lacking)
    return (f"No CVR logloss for {names}: without a CVR tower, p_CVR = p_CTCVR / p_CTR is "
            "capped at 1 where p_CTCVR exceeds p_CTR, and each such clicked row without a "
            "conversion would cost −log ε, a number set by the clip constant ε rather than by "
            "the model; it is reported only where p_CVR is a probability by construction "
            "(ESMM).")


def tuning_text(summary: Summary) -> str:
    """What was chosen on validation, on which seeds, with what budget per arm."""
    sel = summary.selection
    if not sel or not sel.get("budget"):
        return ""
    seeds = seed_list(sel["seeds"])
    what = [f"{PARAM_NAMES.get(k, k)} ∈ {{{', '.join(map(_value, v))}}} for every arm"
            for k, v in sel.get("train", {}).items()]
    what += [f"{PARAM_NAMES.get(k, k)} ∈ {{{', '.join(map(_value, v))}}} for "
             f"{loss_name(loss)}" for loss, params in sel.get("losses", {}).items()
             for k, v in params.items()]
    budget = ", ".join(f"{arm_name(a)} {n}" for a, n in sel["budget"].items())
    untuned = [arm_name(a) for a in summary.losses if a not in sel["budget"]
               and a in dict.fromkeys(summary.runs["arm"])]
    text = (f"Tuned on the validation split per data set, model and arm by the mean best "
            f"validation score over tuning seeds {seeds} (never reported): {'; '.join(what)}; "
            f"settings tried per arm (each on {len(sel['seeds'])} seed"
            f"{'s' if len(sel['seeds']) != 1 else ''}): {budget}")
    if untuned:
        text += f"; not tuned (one setting): {', '.join(untuned)}"
    return text + f". The chosen settings are in {_cells(summary)}."


def _embedding_text(summary: Summary) -> str:
    """Name the embedding optimizer where a run did not use the default (dense Adam)."""
    kinds = {"sparse_adam": "sparse Adam", "rowwise_adagrad": "row-wise Adagrad"}
    runs = summary.runs
    used = [k for k in dict.fromkeys(runs["embedding_optimizer"]) if k in kinds] \
        if "embedding_optimizer" in runs else []
    if not used:
        return ""
    names = " / ".join(kinds[k] for k in used)
    mixed = " (some runs; the others dense Adam)" if runs["embedding_optimizer"].eq("adam").any() \
        else ""
    return f"Embeddings trained with {names} (rows in the batch only){mixed}."


def _cells(summary: Summary) -> str:
    """The file holding every number of the table: cells.csv (cells.test_random.csv)."""
    return "cells.csv" if summary.split == "test" else f"cells.{summary.split}.csv"


def _split_text(summary: Summary) -> str:
    """"Test-split", or the extra evaluation split the table reports ("test_random-split")."""
    return "Test-split" if summary.split == "test" else f"{summary.split}-split"


def clipped_text(summary: Summary, metrics: tuple[str, ...]) -> str:
    """Say how often p_cvr = p_ctcvr / p_ctr was capped at 1, where that shapes a CVR column."""
    runs = summary.runs
    cvr = any(m in METRICS and METRICS.get(m).task == "cvr" for m in metrics)
    if not cvr or "cvr_clipped_share" not in runs:
        return ""
    worst = runs["cvr_clipped_share"].max()
    if not worst > 0:
        return ""
    return (f"CVR of models without a CVR tower is p_CTCVR / p_CTR, capped at 1 where p_CTCVR "
            f"exceeds p_CTR: in up to {worst:.1%} of a run's clicked test rows "
            "(cvr_clipped_share in each run's metrics.json).")


def _seed_text(summary: Summary) -> str:
    ns = summary.cells["n"]
    ns = ns[ns > 0]
    n_text = (f"{ns.iloc[0]} seed{'s' if ns.iloc[0] != 1 else ''}" if ns.nunique() == 1
              else f"{ns.min()}–{ns.max()} seeds per cell (each cell's n in {_cells(summary)})")
    return f"{n_text} (seed{'s' if summary.n_seeds != 1 else ''}: {seed_list(summary.seeds)})"


def seed_list(seeds: list[int]) -> str:
    """1, 2, 3, 4 -> "1–4"; 1, 3, 5 -> "1, 3, 5"."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def test_text(summary: Summary, base: str, metrics: tuple[str, ...]) -> str:
    k = summary.n_comparisons_in(metrics)
    if k == 0:
        others = summary.cells[~summary.cells["is_baseline"]]
        if others.empty:
            return f"Only {base} was run: no loss to compare with it."
        if others["n_pairs"].fillna(0).max() < 2:
            return ("No significance test: a paired test over seeds needs 2 seeds or more "
                    "(use 6 or more).")
        return "No significance test could be computed (see the warnings below the table)."
    c = summary.cells[~summary.cells["is_baseline"] & summary.cells["metric"].isin(metrics)]
    family = " × ".join(_count(c[col].nunique(), word) for col, word in (
        ("dataset", "data set"), ("model", "model"), ("metric", "metric"), ("arm", "loss")))
    full = np.prod([c[x].nunique() for x in ("dataset", "model", "metric", "arm")]) == k
    correction = CORRECTION_NAMES[summary.correction]
    text = (f"↑* / ↓*: better / worse than {base} with {TEST_NAMES[summary.test]} p < "
            f"{summary.alpha:g} {_test_how(summary, metrics)} after {correction} over all {k} "
            f"comparisons of this table" + (f" ({family})." if full else "."))
    if _has_ci(c):
        text += (f" The CIs are per cell and unadjusted, the markers {correction.split()[0]}-"
                 "adjusted: a CI that excludes 0 without a marker is significant only before "
                 "correction.")
    margins = table_margins(summary, metrics)
    if margins:
        shown = ", ".join(f"±{v:g} ({k.replace('auc', 'AUC')})" for k, v in margins.items())
        text += (f" ≈: equivalent, i.e. not significant and within {shown} by two one-sided "
                 f"{TEST_NAMES[summary.test]} tests (p < {summary.alpha:g} after the same "
                 "correction, in a family of its own: each family controls its own error at "
                 f"{summary.alpha:g}, so the table's claims of both kinds together err with "
                 f"probability at most {2 * summary.alpha:g}); n.s.: neither.")
    else:
        text += " n.s.: not significant, which is not evidence of no difference."
    untested = _kinds(metrics) - set(margins)
    if summary.equivalence and untested:
        text += (f" No {'/'.join(sorted(untested))} margin was given: those cells are not "
                 "tested for equivalence.")
    if "p_beats" in c and c["p_beats"].notna().any():
        text += (f" P(a run beats {base}) (p_beats in {_cells(summary)}): Φ(Δ̄ / √(s² + G)), the "
                 f"chance that a run of the loss beats {base}'s run of the same seed on a new "
                 "test set under the CI's model (Bouthillier et al.'s P(A > B)).")
    return text


def _test_how(summary: Summary, metrics: tuple[str, ...]) -> str:
    how = TEST_HOW[summary.test]
    if summary.test in ("wilcoxon", "ttest") and ci_kind(summary, metrics) != "seeds":
        how = how[:-1] + ", though the CI counts it)"
    return how


def _has_ci(c) -> bool:
    return "delta_lo" in c and c["delta_lo"].notna().any()


def _kinds(metrics: tuple[str, ...]) -> set[str]:
    return {METRICS.get(m).kind for m in metrics if m in METRICS} & {"auc", "logloss"}


def table_margins(summary: Summary, metrics: tuple[str, ...]) -> dict[str, float]:
    """The equivalence margins that apply to this table's metrics, by kind."""
    if not summary.equivalence:
        return {}
    kinds = _kinds(metrics)
    return {k: v for k, v in summary.equivalence.items() if k in kinds}


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _value(v) -> str:
    """A loss setting as the caption shows it: 0.5, "squared hinge", "probability"."""
    return VALUE_NAMES.get(v, str(v)) if isinstance(v, str) else f"{v:g}"


def settings_text(summary: Summary, arm: str) -> str:
    loss = summary.losses.get(arm, arm)
    items = []
    varied = False
    settings = summary.settings[arm]
    for key in sorted(settings, key=lambda k: (PARAM_ORDER.index(k) if k in PARAM_ORDER
                                               else len(PARAM_ORDER), k)):
        values = settings[key]
        name = PARAM_NAMES.get(key, key)
        shown = [_value(v) for v in values]
        if len(shown) == 1:
            items.append(f"{name}={shown[0]}")
        else:
            varied = True
            items.append(f"{name} ∈ {{{', '.join(shown)}}}")
    text = f"{arm_name(arm)} settings: {', '.join(items)}"
    if varied:
        text += (" (chosen on validation per data set and model; each cell's in "
                 f"{_cells(summary)})")
    note = loss_note(loss, settings)
    return text + (f" ({note})." if note else ".")


def loss_note(loss: str, settings: dict) -> str:
    """What the loss's registration says about these settings ("" for an unknown loss)."""
    from prlbench.losses import LOSSES, loss_info

    return loss_info(loss).note(settings) if loss in LOSSES else ""


def loss_name(loss: str) -> str:
    """A loss's display name, as registered with it ("PWiseR"); an unknown name as it is."""
    from prlbench.losses import LOSSES, loss_info  # torch: imported when a report is drawn

    return loss_info(loss).display_name if loss in LOSSES else loss


def arm_name(arm: str) -> str:
    """"pwiser[lam=1,m1=0.1]" -> "PWiseR (λ=1, m1=0.1)": an arm's display name, made from its
    spec (prlbench.specs)."""
    from prlbench import specs

    loss, items = specs.parse(arm)
    if not items:
        return loss_name(loss)
    return f"{loss_name(loss)} ({', '.join(f'{PARAM_NAMES.get(k, k)}={v}' for k, v in items)})"


def dataset_name(name: str) -> str:
    """A data set's display name, from its spec ("AliExpress-NL"); an unknown name as it is."""
    from prlbench.data import variants
    from prlbench.errors import ConfigError

    if name in DATASETS:
        return DATASETS.get(name).display_name
    try:
        return variants.display_name(name)  # "Synthetic (noise 0.5)"
    except ConfigError:  # a name this prlbench does not know is shown as it is
        return name


def model_name(name: str) -> str:
    """A model's display name, its class's `display_name` ("MMoE"); an unknown name as it is."""
    from prlbench.models import MODELS  # torch: imported when a report is drawn

    return (getattr(MODELS.get(name), "display_name", "") if name in MODELS else "") or name


# ------------------------------------------------------------- the short captions (papers)
# What each test counts, in a few words, for the short captions.
TEST_SHORT = {"twolevel": "a two-level t-test (seeds and test set)",
              "bootstrap": "a two-level bootstrap test (seeds and test set)",
              "wilcoxon": "a Wilcoxon signed-rank test over seeds",
              "ttest": "a paired t-test over seeds"}
CELLS = ("std", "ci", "mean")  # what a paper-layout cell shows next to its mean (--cells)


def paper_caption(summary: Summary, metrics: tuple[str, ...], kind: str, cells: str = "std",
                  parts: int = 1) -> str:
    """The paper layout's caption, at most about 60 words: what the cells are, the seeds, the
    marker's test and correction, the bold rule. Everything else is in the setup paragraph
    (prlbench.report.setup). `parts`: how many tables the layout was split into."""
    base, what, c = _short_parts(summary, metrics, kind)
    if c.empty:
        return ""
    if c["n"].max() <= 1:
        text = (f"{_split_text(summary)} {what} of each model and loss, one run per cell (seed "
                f"{seed_list(summary.seeds)}): no std and no test with one seed.")
    else:
        spread = "mean ± std" if cells == "std" else "mean"
        text = f"{_split_text(summary)} {what} of each model and loss, {spread} over " \
               f"{_seeds_short(summary, c)}"
        if cells == "ci" and not summary.cells["is_baseline"].all():
            text += (f"; under a mean, Δ: the {_short_ci(summary, metrics)} of its difference "
                     f"to {base}")
        text += "."
    k = summary.n_comparisons_in(metrics)
    if k:
        correction = CORRECTION_NAMES[summary.correction].split()[0]
        every = " (all parts)" if parts > 1 else ""
        text += (f" ↑* / ↓*: better / worse than {base} by {TEST_SHORT[summary.test]} at p < "
                 f"{summary.alpha:g}, {correction}-corrected over the table's {k} comparisons"
                 f"{every}; unmarked: not significant.")
        margins = table_margins(summary, metrics)
        if margins:
            shown = ", ".join(f"±{v:g}" + (f" {kd.replace('auc', 'AUC')}" if len(margins) > 1
                                           else "") for kd, v in margins.items())
            text += f" ≈: equivalent within {shown} (two one-sided tests)."
    elif not c["is_baseline"].all() and c["n"].max() > 1:
        text += " No significance test: fewer than 2 paired seeds."
    if k and (c["outcome"] == "untested").any():
        text += " †: not tested (fewer than 2 paired seeds)."
    return text + " Bold: best mean per column."


def detail_caption(summary: Summary, metrics: tuple[str, ...], kind: str) -> str:
    """The appendix (detail) table's caption, at most about 60 words."""
    base, what, c = _short_parts(summary, metrics, kind)
    if c.empty:
        return ""
    if c["n"].max() <= 1:
        return (f"{_split_text(summary)} {what} per data set, model and loss, one run per cell "
                f"(seed {seed_list(summary.seeds)}); Δ: the difference to {base}. Bold: best "
                "mean per column.")
    rel = " and RelaImpr" if kind == "auc" else ""
    return (f"{_split_text(summary)} {what} per data set, model and loss, mean ± std over "
            f"{_seeds_short(summary, c)}. Δ: the mean paired difference to {base}{rel}, the "
            f"marker of the main table (n.s.: not significant) and, below, its "
            f"{_short_ci(summary, metrics)}, unadjusted. Bold: best mean per column.")


def _short_parts(summary: Summary, metrics: tuple[str, ...], kind: str):
    """(the baseline's name, what the table reports, its cells) for the short captions."""
    what = "AUC" if kind == "auc" else "logloss (lower is better)"
    return (loss_name(summary.baseline), what,
            summary.cells[summary.cells["metric"].isin(metrics)])


def _short_ci(summary: Summary, metrics: tuple[str, ...]) -> str:
    """"95 % two-level CI (seeds and test set)": the Δs' CI in a few words."""
    return f"{(1 - summary.alpha) * 100:g} % {ci_name(summary, metrics)}"


def _seeds_short(summary: Summary, c) -> str:
    """"8 seeds (1–8)", or "6–8 seeds per cell (1–8)"."""
    ns = c["n"][c["n"] > 0]
    many = f"{ns.min()}–{ns.max()} seeds per cell" if ns.nunique() > 1 else \
        f"{ns.iloc[0]} seed{'s' if ns.iloc[0] != 1 else ''}"
    return f"{many} ({seed_list(summary.seeds)})"
