"""The tables as LaTeX (booktabs), laid out to be pasted into a paper as they are.

- `to_latex(table)`: the paper layout (auc.tex): rows model x loss, columns data set x metric,
  each cell the mean with its marker (and the std or the delta's CI, as `table.cells` says),
  the best mean per column in bold, a caption of about 60 words.
- `to_latex(table, layout="detail")`: the appendix table (auc_detail.tex): rows data set x
  model x loss with a delta row under each loss (the paired delta, RelaImpr, the marker, the
  CI), then the wins / n.s. / losses summary.

No table is ever scaled: each is set at the body font or \\small, in one column (`table`) or
across the page (`table*`), whichever first fits by the width the module measures from
Computer Modern's character widths; a table too wide even across the page at \\small is split
into several (by data-set groups in the paper layout, by metrics in the detail layout). The
widths are those of a standard two-column article on A4 (the narrowest of the usual
two-column formats), so the tables fit ACM, IEEE and letter-paper columns too.
Needs only \\usepackage{booktabs} in the including document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prlbench.report import table as tm

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
            "^": r"\textasciicircum{}",
            # In text mode under the default OT1 encoding "<" prints as "¡" and ">" as "¿".
            "<": r"$<$", ">": r"$>$", "|": r"$|$"}
_UNICODE = {"↑*": r"$\uparrow^{*}$", "↓*": r"$\downarrow^{*}$", "±": r"$\pm$",
            "Δ": r"$\Delta$", "λ": r"$\lambda$", "φ": r"$\phi$", "∈": r"$\in$",
            "×": r"$\times$", "–": "--", "—": "---", "↑": r"$\uparrow$",
            "↓": r"$\downarrow$", "†": r"$^{\dagger}$",
            "≥": r"$\geq$", "≈": r"$\approx$", "ε": r"$\varepsilon$", "≤": r"$\leq$",
            "−": r"$-$", "’": "'", "·": r"$\cdot$",
            "Δ̄": r"$\bar{\Delta}$", "√": r"$\surd$", "²": r"$^{2}$", "Φ": r"$\Phi$",
            # "--equivalence": two hyphens, never the en dash "--" makes
            "--": "-{}-"}
_TOKENS = {**_UNICODE, **_SPECIAL}
# Longest first, so "↑*" wins over "↑"; one pass, so nothing is escaped twice.
_PATTERN = re.compile("|".join(re.escape(k) for k in sorted(_TOKENS, key=len, reverse=True)))
_MINUS = re.compile(r"(?<![\w.-])-(?=\d)")  # "-0.0011": a math minus, not a hyphen


def escape(text: str) -> str:
    """Plain Unicode text -> LaTeX source (specials escaped, symbols as math)."""
    text = _MINUS.sub("\u2212", text)  # to U+2212 first, which the one pass makes $-$
    return _PATTERN.sub(lambda m: _TOKENS[m.group(0)], text)


# ------------------------------------------------------------------------------ widths
# Computer Modern Roman 10 pt advance widths (pt) of what the tables print; a character not
# listed counts as the widest of its kind. Measured with pdflatex (\settowidth).
_CHAR_PT = {**dict.fromkeys("0123456789", 5.0), ".": 2.78, ",": 2.78, " ": 3.33, "-": 3.33,
            "(": 3.89, ")": 3.89, "[": 2.78, "]": 2.78, "=": 7.78, "+": 7.78, "±": 7.78,
            "−": 7.78, "≈": 7.78, "×": 7.78, "Δ": 8.33, "λ": 5.83, "φ": 5.97, "α": 6.4,
            "%": 8.33, "/": 5.0, ":": 2.78, ";": 2.78, "'": 2.78, "·": 2.78, "*": 5.0,
            "i": 2.78, "l": 2.78, "j": 3.06, "t": 3.89, "f": 3.06, "r": 3.92, "m": 8.33,
            "w": 7.22, "M": 9.17, "W": 10.28, "I": 3.61}
_MARK_PT = {"↑*": 11.3, "↓*": 11.3, "≈": 9.4, "†": 5.0, "": 0.0}
_LOWER, _UPPER = 5.28, 7.64  # the widest ordinary lower / upper case letters (o, N)
_SIZE = {"normalsize": 1.0, "small": 0.925, "footnotesize": 0.85, "scriptsize": 0.805}  # cmr9, 8, 7
_BOLD = 1.15  # bold digits are 5.75 pt wide
# The usual two-column page, A4 (the narrowest): \columnwidth and \textwidth in pt.
COLUMN_PT, TEXT_PT = 221.0, 452.0
_SEP = 3.0  # \tabcolsep in the paper layout (pt): 6 pt between columns
_SAFETY = 1.04


def text_pt(text: str, size: str = "normalsize") -> float:
    """The width in pt of plain text set in Computer Modern at `size` (10 pt body)."""
    total = 0.0
    for ch in text:
        if ch in _CHAR_PT:
            total += _CHAR_PT[ch]
        elif ch.isupper():
            total += _UPPER
        else:
            total += _LOWER
    return total * _SIZE[size] * _SAFETY


@dataclass(frozen=True)
class Fit:
    """How one table is set: its float (`table` or `table*`), its font, and for the paper
    layout whether the std / CI goes under the mean (stacked) or beside it."""

    env: str
    font: str
    stacked: bool = False


# The paper layout's choices, first fit wins: one column before the full width.
PAPER_FITS = (Fit("table", "normalsize"), Fit("table", "small"),
              Fit("table", "normalsize", True), Fit("table", "small", True),
              Fit("table*", "normalsize"), Fit("table*", "small"),
              Fit("table*", "small", True))
DETAIL_FITS = (Fit("table", "normalsize"), Fit("table", "small"), Fit("table*", "normalsize"),
               Fit("table*", "small"))


def _room(fit: Fit) -> float:
    return COLUMN_PT if fit.env == "table" else TEXT_PT


def to_latex(table: tm.Table, *, layout: str = "paper", standalone: bool = False) -> str:
    """The table's LaTeX: `layout` "paper" (auc.tex) or "detail" (auc_detail.tex, with the
    wins / n.s. / losses summary); `standalone`: a whole two-column article around it."""
    if layout == "paper":
        floats = _paper_floats(table)
    elif layout == "detail":
        floats = _detail_floats(table) + _wtl_float(table)
    else:
        raise ValueError(f"layout {layout!r}: paper or detail")
    body = "\n".join(_header(table) + floats) + "\n"
    if not standalone:
        return body
    return ("\\documentclass[twocolumn,a4paper]{article}\n\\usepackage[T1]{fontenc}\n"
            "\\usepackage{booktabs}\n\\begin{document}\n" + body + "\\end{document}\n")


def _header(table: tm.Table) -> list[str]:
    lines = ["% Generated by prlbench (prlbench compare); do not edit by hand.",
             "% Needs \\usepackage{booktabs}. Set for a two-column page: each table in one "
             "column (table) or across the page (table*), never scaled."]
    # Warnings as comments: the reader of the source sees them; the paper does not.
    return lines + [f"% warning: {n}" for n in table.notes]


def _float(env: str, font: str, caption: str, label: str, tabular: list[str],
           sep: float | None = None) -> list[str]:
    lines = [f"\\begin{{{env}}}[t]", "\\centering"]
    if font != "normalsize":
        lines.append(f"\\{font}")
    if sep is not None:
        lines.append(f"\\setlength{{\\tabcolsep}}{{{sep:g}pt}}")
    return lines + [f"\\caption{{{escape(caption)}}}", f"\\label{{{label}}}", *tabular,
                    f"\\end{{{env}}}", ""]


# ------------------------------------------------------------------------ paper layout
def _paper_floats(table: tm.Table) -> list[str]:
    if not table.rows:
        return []
    datasets = list(dict.fromkeys(r.dataset for r in table.rows))
    groups = _split(datasets, lambda g, fit: _paper_width(table, g, fit), PAPER_FITS)
    out = []
    for i, (group, fit) in enumerate(groups):
        caption = table.paper_caption if len(groups) == 1 else (
            f"{table.paper_caption_split} Part {i + 1} of {len(groups)}.")
        label = table.label if i == 0 else f"{table.label}-{i + 1}"
        out += _float(fit.env, fit.font, caption, label, _paper_tabular(table, group, fit),
                      _SEP)
    return out


def _split(items: list, width, fits: tuple[Fit, ...]) -> list[tuple[list, Fit]]:
    """Items (data sets or metrics) in the fewest consecutive groups that each fit: all in
    one table with the first fit that holds them, else greedy groups at the last (widest)
    fit; an item too wide alone gets a table of its own."""
    for fit in fits:
        if width(items, fit) <= _room(fit):
            return [(items, fit)]
    groups, current = [], []
    for item in items:
        if current and width(current + [item], fits[-1]) > _room(fits[-1]):
            groups.append(current)
            current = []
        current.append(item)
    groups.append(current)
    return [(g, next((f for f in fits if width(g, f) <= _room(f)), fits[-1])) for g in groups]


def _paper_cell_pt(c: tm.Cell | None, table: tm.Table, fit: Fit) -> float:
    if c is None:
        return text_pt("--", fit.font)
    mean, extra = tm.paper_parts(c, table.cells)
    head = text_pt(mean, fit.font) * (_BOLD if c.best else 1.0) \
        + _MARK_PT[tm.paper_marker(c, table.tested)] * _SIZE[fit.font]
    if not extra:
        return head
    if fit.stacked:
        return max(head, text_pt(extra, "scriptsize"))  # \scriptsize: 7 pt at any font
    return head + text_pt(" " + extra, fit.font)


def _paper_width(table: tm.Table, datasets: list[str], fit: Fit) -> float:
    rows = [r for r in table.rows if r.dataset in datasets]
    labels = [text_pt(tm.model_name(r.model), fit.font) for r in rows] + [
        text_pt(tm.arm_name(r.arm), fit.font) + 5.0 for r in rows] + [text_pt("Loss", fit.font)]
    total = max(labels)
    for ds in datasets:
        mine = [r for r in rows if r.dataset == ds]
        cols = [max([text_pt(tm.metric_short(m), fit.font)]
                    + [_paper_cell_pt(r.cells[j], table, fit) for r in mine])
                for j, m in enumerate(table.metrics)]
        span = sum(cols) + 2 * _SEP * (len(cols) - 1)
        total += max(span, text_pt(tm.dataset_name(ds), fit.font)) + 2 * _SEP
    return total


def _paper_tabular(table: tm.Table, datasets: list[str], fit: Fit) -> list[str]:
    k = len(table.metrics)
    n = 1 + k * len(datasets)
    spans = " & ".join(f"\\multicolumn{{{k}}}{{c}}{{{escape(tm.dataset_name(d))}}}"
                       for d in datasets)
    rules = " ".join(f"\\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}"
                     for i in range(len(datasets)))
    heads = " & ".join(escape(tm.metric_short(m)) for m in table.metrics)
    lines = [f"\\begin{{tabular}}{{@{{}}l{'c' * (n - 1)}@{{}}}}", "\\toprule",
             f" & {spans} \\\\", rules,
             "Loss & " + " & ".join([heads] * len(datasets)) + " \\\\", "\\midrule"]
    models = list(dict.fromkeys(r.model for r in table.rows))
    for i, model in enumerate(models):
        if i:
            lines.append("\\addlinespace")
        lines.append(f"\\multicolumn{{{n}}}{{@{{}}l}}{{\\emph{{{escape(tm.model_name(model))}}}}}"
                     " \\\\")
        arms = list(dict.fromkeys(r.arm for r in table.rows if r.model == model))
        for arm in arms:
            cells = []
            for ds in datasets:
                row = next((r for r in table.rows
                            if r.model == model and r.arm == arm and r.dataset == ds), None)
                cells += [_paper_cell(row.cells[j] if row else None, table, fit)
                          for j in range(k)]
            lines.append(" & ".join([f"\\hspace{{0.5em}}{escape(tm.arm_name(arm))}"] + cells)
                         + " \\\\")
    return lines + ["\\bottomrule", "\\end{tabular}"]


def _paper_cell(c: tm.Cell | None, table: tm.Table, fit: Fit) -> str:
    if c is None:
        return "--"
    mean, extra = tm.paper_parts(c, table.cells)
    head = f"\\textbf{{{mean}}}" if c.best else mean
    mark = tm.paper_marker(c, table.tested)
    mark = (("\\," if mark.endswith("*") else "") + escape(mark)) if mark else ""
    if not extra:
        return head + mark
    if not fit.stacked:
        return f"{head} {escape(extra)}{mark}"
    return _stacked([head + mark, f"{{\\scriptsize {escape(extra)}}}"])


# ----------------------------------------------------------------------- detail layout
def _detail_floats(table: tm.Table) -> list[str]:
    if not table.rows:
        return []
    metrics = list(range(len(table.metrics)))
    groups = _split(metrics, lambda g, fit: _detail_width(table, g, fit), DETAIL_FITS)
    out = []
    for i, (group, fit) in enumerate(groups):
        caption = table.detail_caption + (f" Part {i + 1} of {len(groups)}."
                                          if len(groups) > 1 else "")
        label = f"{table.label}-detail" + (f"-{i + 1}" if i else "")
        out += _float(fit.env, fit.font, caption, label, _detail_tabular(table, group))
    return out


def _detail_width(table: tm.Table, idx: list[int], fit: Fit) -> float:
    f = fit.font
    label_cols = [
        max(text_pt(tm.dataset_name(r.dataset), f) for r in table.rows),
        max(text_pt(tm.model_name(r.model), f) for r in table.rows),
        max([text_pt(tm.arm_name(r.arm), f) for r in table.rows]
            + [text_pt(f"Δ vs. {tm.loss_name(table.baseline)}", f) + 10.0])]
    cols = []
    for j in idx:
        widths = [text_pt(tm.metric_short(table.metrics[j]) + " AUC", f)]
        for r in table.rows:
            c = r.cells[j]
            if c is None:
                continue
            widths.append(text_pt(tm.mean_text(c), f) * (_BOLD if c.best else 1.0))
            if not r.is_baseline:
                point, ci = tm.delta_parts(c)
                small = _SIZE["footnotesize"]
                widths.append(text_pt(f"{point} {tm.marker(c)}", f) * small)
                widths.append(text_pt(ci, f) * small)
        cols.append(max(widths))
    return sum(label_cols) + sum(cols) + 12.0 * (len(label_cols) + len(cols))


def _detail_tabular(table: tm.Table, idx: list[int]) -> list[str]:
    spec = "lll" + "c" * len(idx)
    head = " & ".join(["Data set", "Model", "Loss"] + [escape(table.columns[j]) for j in idx])
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", head + " \\\\", "\\midrule"]
    last = (None, None)
    for row in table.rows:
        if last[0] is not None and row.dataset != last[0]:
            lines.append("\\midrule")
        elif last[0] is not None and row.model != last[1]:
            lines.append("\\addlinespace")
        lines += _detail_row(row, last, table.baseline, idx)
        last = (row.dataset, row.model)
    return lines + ["\\bottomrule", "\\end{tabular}"]


def _detail_row(row: tm.Row, last: tuple, baseline: str, idx: list[int]) -> list[str]:
    ds = escape(tm.dataset_name(row.dataset)) if row.dataset != last[0] else ""
    model = (escape(tm.model_name(row.model)) if (row.dataset, row.model) != last else "")
    out = [" & ".join([ds, model, escape(tm.arm_name(row.arm))]
                      + [_mean(row.cells[j]) for j in idx]) + " \\\\"]
    if not row.is_baseline:
        label = f"\\quad $\\Delta$ vs.\\ {escape(tm.loss_name(baseline))}"
        out.append(" & ".join(["", "", label] + [_delta(row.cells[j]) for j in idx]) + " \\\\")
    return out


def _mean(c: tm.Cell | None) -> str:
    if c is None:
        return "--"
    text = escape(tm.mean_text(c))
    return f"\\textbf{{{text}}}" if c.best else text


def _delta(c: tm.Cell | None) -> str:
    """Delta, RelaImpr and marker on one line, the CI below it (a nested one-column tabular)."""
    if c is None:
        return ""
    point, ci = tm.delta_parts(c)
    mark = tm.marker(c)
    first = escape(point) + (f"\\,{escape(mark)}" if mark.endswith("*") else
                             f" {escape(mark)}" if mark else "")
    return "{\\footnotesize" + _stacked([first] + ([escape(ci)] if ci else [])) + "}"


def _stacked(lines: list[str]) -> str:
    """Lines set one under another in one table cell (a nested one-column tabular)."""
    # \relax: a line starting with "[" after \\ would be read as \\[<length>].
    return ("\\begin{tabular}[t]{@{}c@{}}" + " \\\\ \\relax ".join(lines)
            + "\\end{tabular}")


def _wtl_float(table: tm.Table) -> list[str]:
    headers, rows = tm.wtl_rows(table)
    if not rows:
        return []
    tabular = [f"\\begin{{tabular}}{{l{'c' * (len(headers) - 1)}}}", "\\toprule",
               " & ".join(escape(h) for h in headers) + " \\\\", "\\midrule"]
    tabular += [" & ".join(escape(x) for x in r) + " \\\\" for r in rows]
    tabular += ["\\bottomrule", "\\end{tabular}"]
    fit = _split([None], lambda _, f: sum(max(text_pt(r[j], f.font) for r in [headers] + rows)
                                          + 12.0 for j in range(len(headers))), DETAIL_FITS)[0][1]
    return _float(fit.env, fit.font, tm.wtl_caption(table), f"{table.label}-wtl", tabular)
