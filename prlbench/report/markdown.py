"""The table as GitHub Markdown: a pipe table, its caption as a paragraph below, the wins / ties /
losses summary, then any warnings. Each non-baseline arm gets a second row, "Δ vs BCE", with the
paired delta, its CI, RelaImpr and the significance marker under each metric."""

from __future__ import annotations

from tabulate import tabulate

from prlbench.report import table as tm


def to_markdown(table: tm.Table) -> str:
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
    parts = [_pipe(headers, rows, n_left=3), "", table.caption]
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
