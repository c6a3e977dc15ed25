"""Predictions and metrics: the model's three probabilities per impression, then AUCs and loglosses.

On test: CTR AUC and CTCVR AUC over all impressions, CVR AUC over clicked impressions, logloss for
each, group AUC (CTR) over `search_id`; on the synthetic data set also the CTR AUC against the
noise-free (genuine) clicks that the generator recorded in its side file.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from prlbench import stats
from prlbench.stats.logloss import EPS as _EPS, logloss
from prlbench.data.loader import TensorData
from prlbench.machine import release_freed_memory



def slow_bf16_warning(device: str, precision: str) -> str | None:
    """Why bf16 would be slow here, or None: on a CPU without native bf16 (no AVX-512 BF16 or
    AMX, as oneDNN reports it) bf16 matmuls are emulated, hundreds of times slower than fp32
    (measured on an AVX2-only AMD EPYC: 0.3 vs 89 GFLOP/s at 2048 x 2048)."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return None
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is None or check():
        return None
    return ("--precision bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX): its "
            "matmuls are emulated and run far slower than fp32; use --precision fp32 here, or "
            "bf16 on a CPU with AMX or on a GPU")


def autocast(device: str, precision: str):
    """bf16 autocast when asked for, on CPU and GPU alike; a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: torch.nn.Module, data: TensorData, *, batch_size: int = 4096,
            precision: str = "fp32") -> dict[str, np.ndarray]:
    """Probabilities p_ctr, p_ctcvr, p_cvr for every row of `data`, in row order."""
    model.eval()
    device = data.click.device
    parts: dict[str, list[torch.Tensor]] = {"p_ctr": [], "p_ctcvr": [], "p_cvr": []}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)), device=device)
        batch = data.slice(idx)
        with autocast(str(device), precision):
            out = model(batch.categorical, batch.numerical)
        for key, value in probabilities(out).items():
            parts[key].append(value.cpu())
    release_freed_memory()  # the freed activations, kept in glibc's heap otherwise
    return concat_parts(parts)


def probabilities(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's output logits -> p_ctr, p_ctcvr and p_cvr (p_ctcvr / p_ctr, capped to [0, 1],
    for a model without a CVR tower), in float32."""
    ctr = torch.sigmoid(out["ctr"].float())
    ctcvr = torch.sigmoid(out["ctcvr"].float())
    cvr = (torch.sigmoid(out["cvr"].float()) if "cvr" in out
           else (ctcvr / ctr.clamp_min(_EPS)).clamp(0.0, 1.0))
    return {"p_ctr": ctr, "p_ctcvr": ctcvr, "p_cvr": cvr}


def concat_parts(parts: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat(v).numpy().astype(np.float32) if v else np.empty(0, np.float32)
            for k, v in parts.items()}


def validation_score(preds: dict[str, np.ndarray], data: TensorData) -> dict[str, float]:
    """What early stopping watches: the mean of CTR and CTCVR AUC on the validation split."""
    click = data.click.cpu().numpy()
    conversion = data.conversion.cpu().numpy()
    ctr_auc = stats.auc(click, preds["p_ctr"])
    ctcvr_auc = stats.auc(conversion, preds["p_ctcvr"])
    return {"ctr_auc": ctr_auc, "ctcvr_auc": ctcvr_auc, "score": (ctr_auc + ctcvr_auc) / 2}


def test_metrics(preds: dict[str, np.ndarray], click: np.ndarray, conversion: np.ndarray,
                 groups: np.ndarray | None, genuine: np.ndarray | None = None, *,
                 cvr_is_probability: bool = True, eps: float = _EPS) -> dict:
    """The test metrics of one run (metrics.json): every key is registered in
    prlbench.metrics, which states its direction, display name and report table.

    `cvr_is_probability` False (a model whose p_cvr = p_ctcvr / p_ctr is capped at 1 where
    p_ctcvr > p_ctr): no CVR logloss, since each capped clicked row without a conversion would
    cost -log(eps), a number set by the clip constant rather than by the model."""
    clicked = click == 1
    m = {
        "ctr_auc": stats.auc(click, preds["p_ctr"]),
        "ctcvr_auc": stats.auc(conversion, preds["p_ctcvr"]),
        "cvr_auc": stats.auc(conversion[clicked], preds["p_cvr"][clicked]),
        "ctr_logloss": logloss(click, preds["p_ctr"], eps),
        "ctcvr_logloss": logloss(conversion, preds["p_ctcvr"], eps),
        # clicked rows whose p_ctcvr exceeds p_ctr: p_cvr = p_ctcvr / p_ctr is capped at 1 there
        # (0 for ESMM, whose p_ctcvr = p_ctr * p_cvr)
        "cvr_clipped_share": (float(np.mean(preds["p_ctcvr"][clicked] > preds["p_ctr"][clicked]))
                              if clicked.any() else float("nan")),
        "rows": int(len(click)),
        "clicks": int(click.sum()),
        "conversions": int(conversion.sum()),
    }
    if cvr_is_probability:
        m["cvr_logloss"] = logloss(conversion[clicked], preds["p_cvr"][clicked], eps)
    if groups is not None:
        m["ctr_gauc"] = stats.group_auc(click, preds["p_ctr"], groups)
    if genuine is not None:
        m["ctr_auc_noise_free"] = stats.auc(genuine, preds["p_ctr"])
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in m.items()}


def cvr_is_probability(model) -> bool:
    """Whether the model's p_cvr is a probability by construction: a CVR tower (ESMM), or
    p_ctcvr <= p_ctr built in, so p_ctcvr / p_ctr never needs the cap at 1."""
    return bool(getattr(model, "guarantees_ctcvr_le_ctr", False))


# The columns of a data set's side file that evaluate_on_test reads.
SIDE_COLUMNS = ("genuine",)


def evaluate_on_test(model: torch.nn.Module, data: TensorData, manifest: dict, *,
                     side: dict | None, precision: str, batch_size: int) -> tuple[dict, "object"]:
    """Test metrics and the per-example predictions table (a pyarrow Table)."""
    import pyarrow as pa

    t0 = time.perf_counter()
    preds = predict(model, data, batch_size=batch_size, precision=precision)
    click = data.click.cpu().numpy().astype(np.int8)
    conversion = data.conversion.cpu().numpy().astype(np.int8)
    groups = data.group.cpu().numpy() if manifest.get("has_groups", True) else None
    genuine = None
    if side is not None and "genuine" in side:
        genuine = (np.asarray(side["genuine"]) == 1).astype(np.int8)
    metrics = test_metrics(preds, click, conversion, groups, genuine,
                           cvr_is_probability=cvr_is_probability(model))
    metrics["seconds"] = time.perf_counter() - t0
    columns = {"row": np.arange(len(click), dtype=np.int64), "search_id": data.group.cpu().numpy(),
               "click": click, "conversion": conversion, **preds}
    if genuine is not None:
        columns["genuine_click"] = genuine
    return metrics, pa.table(columns)
