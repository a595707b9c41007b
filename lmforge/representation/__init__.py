"""Representation learning: contrastive predictive coding (InfoNCE) and the margin-softmax
family of face-recognition losses.

    from lmforge.representation import margin_loss
    logits, loss = margin_loss("arcface", features, weights, labels, scale=16.0, margin=0.5)

| module | what |
|---|---|
| `margin_softmax` | softmax, NormFace, L-Softmax, A-Softmax (SphereFace), AM-Softmax (CosFace), ArcFace as pure functions |
| `cpc` | CPC: conv encoder, GRU / causal-transformer context, W_k predictors, InfoNCE with the MI bound, probe |
| `verification` | identity verification: synthetic identities, an embedding net trained with a margin loss, TAR / accuracy at a fixed FAR |
| `runs` | ``lmforge foundations cpc / margin`` through the Trainer: checkpoints, resume, metrics.jsonl, curves and angle PNGs, report.json |
| `trainer_runs` | non-token models through the one Trainer: position-indexed loader (exact resume), weights hook, mean-loss objective |
"""

from lmforge.representation.cpc import CPCModel, CPCSettings, cpc_loss, info_nce, train_cpc
from lmforge.representation.margin_softmax import MARGIN_LOSSES, margin_loss

__all__ = ["CPCModel", "CPCSettings", "MARGIN_LOSSES", "cpc_loss", "info_nce", "margin_loss",
           "train_cpc"]  # fmt: skip
