"""ESMM: Entire Space Multi-task Model.

Ma et al., "Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
Conversion Rate", SIGIR 2018. A CTR network and a CVR network share the embedding; both are
trained over all impressions through pCTCVR = pCTR * pCVR, so the CVR network never sees the
sample-selection bias of training on clicks only. ctcvr <= ctr by construction.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .factory import MODELS
from .layers import MLP, FeatureEmbedding, MultiTaskModel, Tower, logit_of_product


@MODELS.register("esmm")
class ESMM(MultiTaskModel):
    display_name = "ESMM"
    summary = "shared embedding, CTR and CVR networks, ctcvr = ctr * cvr over the entire space"
    output_towers = {"ctr": "ctr_tower", "cvr": "cvr_tower"}
    guarantees_ctcvr_le_ctr = True

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        in_dim = self.embedding.output_dim
        # Each network: bottom MLP then tower, the same depth as the other models' task paths.
        self.ctr_bottom = MLP(in_dim, bottom_dims, dropout)
        self.cvr_bottom = MLP(in_dim, bottom_dims, dropout)
        self.ctr_tower = Tower(self.ctr_bottom.output_dim, tower_dims, dropout)
        self.cvr_tower = Tower(self.cvr_bottom.output_dim, tower_dims, dropout)

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        ctr = self.ctr_tower(self.ctr_bottom(x))  # [B] logit of P(click)
        cvr = self.cvr_tower(self.cvr_bottom(x))  # [B] logit of P(conversion | click)
        # logit of sigmoid(ctr) * sigmoid(cvr), in log space so tiny products stay exact.
        return {"ctr": ctr, "cvr": cvr, "ctcvr": logit_of_product(ctr, cvr)}
