"""The experimental-setup paragraph a paper needs, and the references it cites.

    setup_markdown(summary, protocol), setup_latex(summary, protocol)  # tables/setup.{md,tex}
    bibtex(keys)                                                         # tables/references.bib

Written from the summary (what was compared, how it was tested) and the compare record
(`compare.json`: the training settings every run shared), in plain prose a reader can paste
and edit: the data sets and their splits, the models and their preset, the training, the
losses with their settings and the reading used, the seeds and tuning seeds, early stopping,
the CI, the test and the correction. Everything the tables' short captions leave out is here.

Citations are written once, as `[@key]` in the prose: the LaTeX version makes them
`\\cite{key}` (plain \\cite, so that it works with any bibliography style, natbib or not),
the Markdown one "(Author et al. year)". Every key has an entry in REFERENCES, whose facts
(title, first author, venue, year) are those the project's sources state; an author list the
sources give only as "X et al." is written "X and others" (BibTeX's "et al.").
"""

from __future__ import annotations

import re

from prlbench.errors import PrlbenchError
from prlbench.metrics import METRICS, display_name
from prlbench.report import caption as cp
from prlbench.report.analysis import Summary

# key -> (entry type, fields). Only what the project's sources state; nothing guessed.
REFERENCES: dict[str, tuple[str, dict[str, str]]] = {
    "durmus2024pwiser": ("misc", {
        "author": "Durmus and others",
        "title": "Pairwise Ranking Loss for Multi-Task Learning in Recommender Systems",
        "year": "2024", "eprint": "2406.02163", "archiveprefix": "arXiv",
        "howpublished": "arXiv:2406.02163"}),
    "caruana1997multitask": ("article", {
        "author": "Caruana", "title": "Multitask Learning", "journal": "Machine Learning",
        "year": "1997"}),
    "jacobs1991adaptive": ("article", {
        "author": "Jacobs and others", "title": "Adaptive Mixtures of Local Experts",
        "journal": "Neural Computation", "year": "1991"}),
    "ma2018esmm": ("inproceedings", {
        "author": "Ma and others",
        "title": "Entire Space Multi-Task Model: An Effective Approach for Estimating "
                 "Post-Click Conversion Rate", "booktitle": "SIGIR", "year": "2018"}),
    "ma2018mmoe": ("inproceedings", {
        "author": "Ma and others",
        "title": "Modeling Task Relationships in Multi-task Learning with Multi-gate "
                 "Mixture-of-Experts", "booktitle": "KDD", "year": "2018"}),
    "tang2020ple": ("inproceedings", {
        "author": "Tang and others",
        "title": "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) "
                 "Model for Personalized Recommendations", "booktitle": "RecSys",
        "year": "2020"}),
    "xi2021aitm": ("inproceedings", {
        "author": "Xi and others",
        "title": "Modeling the Sequential Dependence among Audience Multi-step Conversions "
                 "with Multi-task Learning in Targeted Display Advertising",
        "booktitle": "KDD", "year": "2021"}),
    "zhu2021metaheac": ("inproceedings", {
        "author": "Zhu and others",
        "title": "Learning to Expand Audience via Meta Hybrid Experts and Critics for "
                 "Recommendation and Advertising", "booktitle": "KDD", "year": "2021"}),
    "lin2024ranking": ("inproceedings", {
        "author": "Lin and others",
        "title": "Understanding the Ranking Loss for Recommendation with Sparse User Feedback",
        "booktitle": "KDD", "year": "2024"}),
    "bai2023regression": ("inproceedings", {
        "author": "Bai and others",
        "title": "Regression Compatible Listwise Objectives for Calibrated Ranking with "
                 "Binary Relevance", "booktitle": "WWW", "year": "2023"}),
    "easyrec": ("misc", {
        "author": "Alibaba", "title": "EasyRec",
        "howpublished": "Alibaba's recommendation library, its pairwise logistic loss over "
                        "graded labels"}),
    "gao2022kuairand": ("inproceedings", {
        "author": "Gao and others",
        "title": "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly "
                 "Exposed Videos", "booktitle": "CIKM", "year": "2022"}),
    "aliexpress": ("misc", {
        "author": "Alibaba", "title": "AliExpress Dataset (search logs of AliExpress)",
        "howpublished": "Tianchi data set 74690, tianchi.aliyun.com/dataset/74690"}),
    "aliccp": ("misc", {
        "author": "Alibaba", "title": "Ali-CCP: Alibaba Click and Conversion Prediction",
        "howpublished": "Tianchi data set 408, tianchi.aliyun.com/dataset/408"}),
    "delong1988comparing": ("article", {
        "author": "DeLong, Elizabeth R. and DeLong, David M. and Clarke-Pearson, Daniel L.",
        "title": "Comparing the Areas under Two or More Correlated Receiver Operating "
                 "Characteristic Curves: A Nonparametric Approach",
        "journal": "Biometrics", "volume": "44", "number": "3", "pages": "837--845",
        "year": "1988"}),
    "sun2014fast": ("article", {
        "author": "Sun, Xu and Xu, Weichao",
        "title": "Fast Implementation of DeLong's Algorithm for Comparing the Areas Under "
                 "Correlated Receiver Operating Characteristic Curves",
        "journal": "IEEE Signal Processing Letters", "volume": "21", "number": "11",
        "year": "2014"}),
    "holm1979simple": ("article", {
        "author": "Holm, Sture", "title": "A Simple Sequentially Rejective Multiple Test "
                                          "Procedure",
        "journal": "Scandinavian Journal of Statistics", "volume": "6", "pages": "65--70",
        "year": "1979"}),
    "benjamini1995controlling": ("article", {
        "author": "Benjamini, Yoav and Hochberg, Yosef",
        "title": "Controlling the False Discovery Rate: A Practical and Powerful Approach to "
                 "Multiple Testing", "journal": "Journal of the Royal Statistical Society, "
                                               "Series B", "volume": "57", "number": "1",
        "year": "1995"}),
    "hesterberg2015teachers": ("article", {
        "author": "Hesterberg, Tim C.",
        "title": "What Teachers Should Know About the Bootstrap: Resampling in the "
                 "Undergraduate Statistics Curriculum", "journal": "The American Statistician",
        "volume": "69", "number": "4", "pages": "371--386", "year": "2015"}),
    "satterthwaite1946approximate": ("article", {
        "author": "Satterthwaite, F. E.",
        "title": "An Approximate Distribution of Estimates of Variance Components",
        "journal": "Biometrics Bulletin", "volume": "2", "number": "6", "year": "1946"}),
    "wilcoxon1945individual": ("article", {
        "author": "Wilcoxon, Frank", "title": "Individual Comparisons by Ranking Methods",
        "journal": "Biometrics Bulletin", "volume": "1", "number": "6", "year": "1945"}),
    "bouthillier2021accounting": ("inproceedings", {
        "author": "Bouthillier, Xavier and others",
        "title": "Accounting for Variance in Machine Learning Benchmarks",
        "booktitle": "MLSys", "year": "2021"}),
    "yan2014coupled": ("inproceedings", {
        "author": "Yan, Ling and others",
        "title": "Coupled Group Lasso for Web-Scale CTR Prediction in Display Advertising",
        "booktitle": "ICML", "year": "2014"}),
    "prlbench": ("misc", {
        "author": "{prlbench contributors}",
        "title": "prlbench: a benchmark of ranking losses for multi-task recommenders",
        "howpublished": "Software, version {version}", "year": "2026"}),
}
MODEL_REFS = {"single_task": "caruana1997multitask", "shared_bottom": "caruana1997multitask",
              "esmm": "ma2018esmm", "omoe": "jacobs1991adaptive; @ma2018mmoe",
              "mmoe": "ma2018mmoe",
              "ple": "tang2020ple", "aitm": "xi2021aitm", "metaheac": "zhu2021metaheac"}
LOSS_REFS = {"pwiser": "durmus2024pwiser", "listce": "bai2023regression", "graded": "easyrec"}
DATASET_REFS = {"aliexpress": "aliexpress", "aliccp": "ma2018esmm; @aliccp",
                "kuairand": "gao2022kuairand"}
TEST_REFS = {"wilcoxon": "wilcoxon1945individual", "bootstrap": "hesterberg2015teachers"}
CORRECTION_REFS = {"holm": "holm1979simple", "bh": "benjamini1995controlling"}
_CITE = re.compile(r"\[@([^\]]+)\]")
_HEAD = re.compile(r"^([A-Z][a-z]+\.)(?= )", re.M)  # a paragraph's lead word: "Data."


def setup_text(summary: Summary, protocol: dict | None = None) -> str:
    """The setup paragraphs as plain text with `[@key]` citations (see the module doc);
    `protocol`: compare.json's content (None: the training settings are left out)."""
    protocol = protocol or {}
    paras = [_data(summary), _models(summary, protocol), _training(protocol),
             _losses(summary), _seeds(summary, protocol), _statistics(summary)]
    return "\n\n".join(p for p in paras if p)


def cited(text: str) -> list[str]:
    """The reference keys `text` cites, in order of first citation."""
    keys = [k.strip().lstrip("@") for group in _CITE.findall(text) for k in group.split(";")]
    return list(dict.fromkeys(keys))


def setup_markdown(summary: Summary, protocol: dict | None = None) -> str:
    text = setup_text(summary, protocol)

    def author_year(m: re.Match) -> str:
        return "(" + "; ".join(_short_ref(k.strip().lstrip("@")) for k in m.group(1).split(";")) \
            + ")"

    body = _CITE.sub(author_year, text)
    body = _HEAD.sub(lambda m: f"**{m.group(1)}**", body)
    return ("# Experimental setup\n\nGenerated by prlbench from compare.json and the runs; "
            "paste and edit. The LaTeX version (setup.tex) cites references.bib.\n\n"
            + body + "\n")


def setup_latex(summary: Summary, protocol: dict | None = None) -> str:
    from prlbench.report.latex import escape

    text = setup_text(summary, protocol)
    out = []
    for para in text.split("\n\n"):
        pieces, pos = [], 0
        for m in _CITE.finditer(para):
            pieces.append(escape(para[pos:m.start()]).rstrip())
            keys = ",".join(k.strip().lstrip("@") for k in m.group(1).split(";"))
            pieces.append(f"~\\cite{{{keys}}}")
            pos = m.end()
        pieces.append(escape(para[pos:]))
        out.append(_HEAD.sub(lambda m: f"\\paragraph{{{m.group(1)}}}", "".join(pieces), 1))
    return ("% Generated by prlbench (prlbench compare): the experimental setup, to paste and "
            "edit.\n% Cites with plain \\cite{...} (keys in references.bib): works with any "
            "bibliography style; under natbib use \\citet / \\citep where you prefer.\n\n"
            + "\n\n".join(out) + "\n")


def bibtex(keys: list[str]) -> str:
    """references.bib: an entry for each key (REFERENCES), in the order given."""
    from prlbench import __version__

    out = ["% Generated by prlbench: the references the tables and setup.tex cite."]
    for key in keys:
        kind, fields = REFERENCES[key]
        body = ",\n".join(f"  {name} = {{{value.replace('{version}', __version__)}}}"
                          for name, value in fields.items())
        out.append(f"@{kind}{{{key},\n{body}\n}}")
    return "\n\n".join(out) + "\n"


def _short_ref(key: str) -> str:
    """"Ma et al. 2018", "Sun and Xu 2014", "Holm 1979": a citation in author-year form."""
    fields = REFERENCES[key][1]
    surnames = [a.split(",")[0].strip("{} ") for a in fields["author"].split(" and ")]
    if len(surnames) == 1:
        who = surnames[0]
    elif len(surnames) == 2 and surnames[1] != "others":
        who = f"{surnames[0]} and {surnames[1]}"
    else:
        who = f"{surnames[0]} et al."
    return f"{who} {fields.get('year', '')}".strip()


def _names(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- paragraphs
def _data(summary: Summary) -> str:
    from prlbench.data import variants

    described = []
    for ds in dict.fromkeys(summary.runs["dataset"]):
        name = cp.dataset_name(ds)
        try:
            base = variants.base_name(ds)
        except PrlbenchError:  # a name this prlbench does not know: as it is
            base = ds
        ref = next((r for prefix, r in DATASET_REFS.items() if base.startswith(prefix)), None)
        about = [_test_size(summary, ds)]
        if base == "synthetic":
            about.insert(0, "prlbench's generated data set: clicks and conversions drawn from "
                            "known probabilities, with a share of noise clicks")
        about = "; ".join(a for a in about if a)
        described.append(name + (f" [@{ref}]" if ref else "") + (f" ({about})" if about else ""))
    notes = [f"{cp.dataset_name(d)}: {n}." for d, n in summary.data_notes.items()
             if d in set(summary.runs["dataset"])]
    text = (f"Data. We use {_names(described)}. Each data set's validation split is carved from "
            "its training split once, with a fixed seed, and is the same for every run; only "
            "early stopping and the choice of settings use it, and the test split is read once "
            "per run, at its end.")
    return " ".join([text] + notes)


def _test_size(summary: Summary, ds: str) -> str:
    runs = summary.runs[summary.runs["dataset"] == ds]
    if "rows" not in runs or runs["rows"].isna().all():
        return ""
    r = runs.iloc[0]
    parts = [f"test split: {int(r['rows']):,} impressions"]
    if "clicks" in runs and r.notna().get("clicks", False):
        parts.append(f"{int(r['clicks']):,} clicks")
    if "conversions" in runs and r.notna().get("conversions", False):
        parts.append(f"{int(r['conversions']):,} conversions")
    return ", ".join(parts)


def _models(summary: Summary, protocol: dict) -> str:
    from prlbench.config import default_preset
    from prlbench.models.factory import resolve_hyperparameters

    model_cfg = (protocol.get("base") or {}).get("model") or {}
    datasets = list(dict.fromkeys(summary.runs["dataset"]))
    try:
        presets = {model_cfg.get("preset") or default_preset(d) for d in datasets}
    except PrlbenchError:  # a data set this prlbench does not know: its preset unknown too
        presets = set()
    items = []
    for m in dict.fromkeys(summary.runs["model"]):
        ref = MODEL_REFS.get(m)
        items.append(cp.model_name(m) + (f" [@{ref}]" if ref else ""))
    text = f"Models. {_names(items)}, built by prlbench"
    if len(presets) == 1:
        preset = presets.pop()
        text += f" at its {preset} preset"
        try:
            hp = resolve_hyperparameters(summary.runs["model"].iloc[0], preset,
                                         model_cfg.get("overrides") or {})
            shown = "; ".join(f"{k} {_hp(v)}" for k, v in hp.items())
            text += f" ({cp.model_name(summary.runs['model'].iloc[0])}: {shown})"
        except PrlbenchError:  # an unknown model in old runs: the preset's name is enough
            pass
    elif presets:
        text += f" at each data set's default preset ({', '.join(sorted(presets))})"
    text += ("; every model outputs the click probability (CTR), the click-and-conversion "
             "probability (CTCVR) and the conversion probability of a click (CVR).")
    return text


def _hp(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(map(str, v)) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _training(protocol: dict) -> str:
    train = (protocol.get("base") or {}).get("train") or {}
    if not train:
        return ""
    text = (f"Training. Adam (learning rate {train['lr']:g}, weight decay "
            f"{train['weight_decay']:g}), batch size {train['batch_size']}, at most "
            f"{train['epochs']} epochs in {train['precision']}; early stopping on the "
            "validation split's mean of CTR and CTCVR AUC with a patience of "
            f"{train['patience']} epochs, the best epoch's weights evaluated on the test split.")
    if train.get("init_bias"):
        text += " Each output bias starts at the log-odds of its label's training rate."
    emb = train.get("embedding_optimizer", "adam")
    if emb != "adam":
        text += f" Embeddings are trained with {emb.replace('_', ' ')} (rows in the batch only)."
    return text


def _losses(summary: Summary) -> str:
    base = cp.loss_name(summary.baseline)
    parts = [f"Losses. The baseline, {base}, is the mean of the tasks' binary cross-entropies."]
    for arm in sorted(summary.settings):
        if arm == summary.baseline:
            continue
        loss = summary.losses.get(arm, arm)
        ref = LOSS_REFS.get(loss)
        if loss == "ranknet":
            ref = "lin2024ranking" if "both" in map(str, summary.settings[arm].get("head", [])) \
                else None
        name = cp.arm_name(arm)
        settings = cp.settings_text(summary, arm) if summary.settings[arm] else f"{name}."
        if ref:
            settings = settings.replace(name, f"{name} [@{ref}]", 1)
        parts.append(settings)
    tuning = cp.tuning_text(summary)
    if tuning:
        parts.append(tuning)
    return " ".join(parts)


def _seeds(summary: Summary, protocol: dict) -> str:
    n = summary.n_seeds
    text = (f"Seeds. Every model and loss is trained with the same {n} seed"
            f"{'s' if n != 1 else ''} ({cp.seed_list(summary.seeds)}); a loss and "
            f"{cp.loss_name(summary.baseline)} are paired by seed.")
    tune = protocol.get("tune_seeds") or []
    if summary.selection and tune:
        text += (f" Settings given as candidates are chosen on the tuning seeds "
                 f"{cp.seed_list(list(tune))}, which are never reported.")
    return text


def _statistics(summary: Summary) -> str:
    metrics = tuple(m for m in summary.metrics if m in METRICS and METRICS.get(m).kind == "auc")
    metrics = metrics or tuple(summary.metrics)
    names = _names([display_name(m) for m in metrics])
    text = [f"Statistics. We report {names} on the test split"
            " (CVR AUC over the clicked impressions), mean and std over seeds."]
    if summary.cells["is_baseline"].all():
        return " ".join(text)
    if summary.n_seeds >= 2:
        ci = cp.ci_text(summary, metrics)
        refs = ["satterthwaite1946approximate"] if cp.ci_kind(summary, metrics) != "seeds" else []
        refs.append("hesterberg2015teachers")
        text.append(f"Δ is the mean paired difference to {cp.loss_name(summary.baseline)} with "
                    f"its {ci} [@{'; @'.join(refs)}]; RelaImpr [@yan2014coupled] is "
                    "((AUC − 0.5) / (AUC of the baseline − 0.5) − 1) × 100 %.")
        test = cp.test_text(summary, cp.loss_name(summary.baseline), metrics)
        for name, ref in ((cp.TEST_NAMES[summary.test], TEST_REFS.get(summary.test)),
                          (cp.CORRECTION_NAMES[summary.correction],
                           CORRECTION_REFS[summary.correction])):
            if ref:
                test = test.replace(name, f"{name} [@{ref}]", 1)
        test = test.replace("(Bouthillier et al.'s P(A > B))",
                            "(Bouthillier et al.'s P(A > B) [@bouthillier2021accounting])")
        text.append(test.replace("this table", "each table"))
    clipped = cp.clipped_text(summary, tuple(summary.metrics))
    if clipped:
        text.append(clipped)
    if not summary.delong.empty:
        text.append("DeLong's test [@delong1988comparing; @sun2014fast] on each seed's test "
                    "predictions is reported beside (cells.csv); it does not set the marker, "
                    "because it ignores training randomness.")
    text.append("All numbers were computed with prlbench [@prlbench].")
    return " ".join(text)
