"""Cross-modal matching losses: CMPM, CMPC, the baselines they are compared with, and the CMPM
family of text-based person search that came after (SDM, InfoNCE, R-ITC, TAL; notebook 14).

Paper: Ying Zhang and Huchuan Lu, "Deep Cross-Modal Projection Learning for Image-Text
Matching", ECCV 2018. The CMPM and CMPC definitions follow the authors' released TensorFlow
code (``modules.py``) by default; where the paper, the code and the public PyTorch ports
differ, the choice is an argument and the docstring says which is which.

Notation used throughout (a batch of $n$ matched image-text pairs, $d$-dimensional):

* $x_i$ -- ``image_embeddings[i]``, shape ``(n, d)``, *not* normalised;
* $z_j$ -- ``text_embeddings[j]``, shape ``(n, d)``, *not* normalised;
* $\\bar z_j = z_j / \\lVert z_j \\rVert$ -- the L2-normalised text embedding (likewise $\\bar x_j$);
* $y_{ij} = [\\text{label}_i = \\text{label}_j]$ -- the match mask (diagonal included), ``(n, n)``;
* $W$ -- classifier weights of shape ``(d, num_classes)``, one column per identity / image id.

Numerics: every loss computes in at least float32 (float16 / bfloat16 inputs are promoted and
autocast is switched off inside), so it can be called under mixed precision; normalising a
zero vector gives a zero vector (not NaN). The losses see only the tensors they are given:
under DDP the trainer passes all-gathered global-batch features and nothing here depends on
the process.
"""

from .registry import (
    LOSS_NAMES,
    LOSS_SCOPES,
    parse_loss_scope,
    DEFAULT_OPTIONS,
    CrossModalLoss,
)
from .common import (
    NORM_EPS,
    match_mask,
    true_distribution,
    scalar_projection,
    vector_projection,
)
from .cmpm import (
    compatibility_distribution,
    cmpm_loss,
)
from .cmpc import (
    cmpc_loss,
    CMPCClassifier,
)
from .baselines import (
    softmax_loss,
    norm_softmax_loss,
    ranking_loss,
    CMCELoss,
)
from .family import (
    sdm_loss,
    info_nce_loss,
    ritc_loss,
    RITCLoss,
    tal_loss,
)

__all__ = [
    "LOSS_NAMES",
    "LOSS_SCOPES",
    "parse_loss_scope",
    "DEFAULT_OPTIONS",
    "CrossModalLoss",
    "NORM_EPS",
    "match_mask",
    "true_distribution",
    "scalar_projection",
    "vector_projection",
    "compatibility_distribution",
    "cmpm_loss",
    "cmpc_loss",
    "CMPCClassifier",
    "softmax_loss",
    "norm_softmax_loss",
    "ranking_loss",
    "CMCELoss",
    "sdm_loss",
    "info_nce_loss",
    "ritc_loss",
    "RITCLoss",
    "tal_loss",
]
