"""The tables as GitHub Markdown, in the two layouts of the LaTeX ones:

- "paper" (auc.md): rows model x loss, columns data set x metric, each cell the mean with its
  marker (and the std or the delta's CI, as `table.cells` says); the short caption below, then
  the wins / n.s. / losses summary and any warnings.
- "detail" (auc_detail.md): rows data set x model x loss; each non-baseline arm gets a second
  row, "Δ vs BCE", with the paired delta, its CI, RelaImpr and the significance marker under
  each metric; the full caption (the whole protocol) below, the summary, the warnings."""

from __future__ import annotations

from tabulate import tabulate

from prlbench.report import table as tm


def to_markdown(table: tm.Table, *, layout: str = "paper") -> str:
    if layout == "paper":
        return _paper(table)
    if layout != "detail":
        raise ValueError(f"layout {layout!r}: paper or detail")
    headers = ["Data set", "Model", "Loss", *table.columns]
    rows = []
    last = (None, None)
    for row in table.rows:
        # Blank a repeated data set / model: the table reads as groups.
        ds, model = row.dataset, row.model
        labels = [tm.dataset_name(ds) if ds != last[0] else "",
                  tm.model_name(model) if (ds, model) != last else ""]
        last = (ds, model)
        rows.append(labels + [tm.arm_name(row.arm)] + [_mean(c) for c in row.cells])
        if not row.is_baseline:
            rows.append(["", "", f"Δ vs {tm.loss_name(table.baseline)}"]
                        + [_delta(c) for c in row.cells])
    return _finish(table, [_pipe(headers, rows, n_left=3), "", table.caption])


def _paper(table: tm.Table) -> str:
    datasets = list(dict.fromkeys(r.dataset for r in table.rows))
    several = len(datasets) > 1
    headers = ["Model", "Loss"] + [
        (f"{tm.dataset_name(d)} · {tm.metric_short(m)}" if several else tm.metric_short(m))
        for d in datasets for m in table.metrics]
    rows = []
    last = None
    for model, arm in dict.fromkeys((r.model, r.arm) for r in table.rows):
        by_ds = {r.dataset: r for r in table.rows if r.model == model and r.arm == arm}
        cells = [_paper_cell(by_ds[d].cells[j] if d in by_ds else None, table)
                 for d in datasets for j in range(len(table.metrics))]
        rows.append([tm.model_name(model) if model != last else "", tm.arm_name(arm)] + cells)
        last = model
    head = ([f"**{tm.dataset_name(datasets[0])}**", ""] if not several and datasets else [])
    return _finish(table, head + [_pipe(headers, rows, n_left=2), "", table.paper_caption])


def _paper_cell(c: tm.Cell | None, table: tm.Table) -> str:
    if c is None:
        return "–"
    mean, extra = tm.paper_parts(c, table.cells)
    mark = tm.paper_marker(c, table.tested).replace("*", r"\*")
    text = (f"**{mean}**" if c.best else mean) + (f" {extra}" if extra else "")
    return f"{text} {mark}" if mark else text


def _finish(table: tm.Table, parts: list[str]) -> str:
    wtl_headers, wtl_rows = tm.wtl_rows(table)
    if wtl_rows:
        parts += ["", tm.wtl_caption(table), "", _pipe(wtl_headers, wtl_rows, n_left=1)]
    if table.notes:
        parts += ["", "Warnings:", ""] + [f"- {n}" for n in table.notes]
    return "\n".join(parts) + "\n"


def _pipe(headers: list[str], rows: list[list[str]], n_left: int) -> str:
    align = ["left"] * n_left + ["right"] * (len(headers) - n_left)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=align)


def _mean(c: tm.Cell | None) -> str:
    if c is None:
        return "–"
    text = tm.mean_text(c)
    return f"**{text}**" if c.best else text


def _delta(c: tm.Cell | None) -> str:
    if c is None:
        return ""
    mark = tm.marker(c).replace("*", r"\*")  # a bare * could open emphasis
    return f"{tm.delta_text(c)} {mark}".rstrip()
