"""The model zoo: one file per architecture, all registered in MODELS and built by create_model.

Every model maps (categorical [B, F_cat] int64, numerical [B, F_num] float32) to a dict of logits
of shape [B]: "ctr" (P(click)) and "ctcvr" (P(click and conversion)); ESMM adds "cvr"
(P(conversion | click)); AITM adds "aux_loss" (its calibrator's per-row terms [B], already
weighted; the loss adds their mean).
"""

from .factory import (
    MODEL_PRESETS,
    MODELS,
    create_model,
    hyperparameters,
    model_summaries,
    presets,
)

# Importing a model file registers it; the order here is the registry's (and the tables') order.
from . import single_task, shared_bottom, esmm, omoe, mmoe, ple, aitm, metaheac  # noqa: E402,F401

__all__ = ["MODELS", "MODEL_PRESETS", "create_model", "hyperparameters", "model_summaries",
           "presets"]
