"""Peer attribution methods run through the peers' own libraries (the optional `bench` extra).

Each is `method(ctx) -> (scores, timing)` like the baselines (see baselines.py): scores (Q, N), positive
= including the training document lowers the query's loss; the sign of every method here was
checked against the ground truth on digits-mlp (a flipped sign gives a clearly negative LDS).

- `kronfluence`: EK-FAC influence functions (`kronfluence.Analyzer`, strategy "ekfac", the library's
  default damping heuristic). Score = g_query^T (G + damping)^-1 g_train, query measurement = the
  query's loss (digits: cross-entropy of the true label; tiny-lm: mean continuation NLL, exactly the
  ground-truth output). Fit = covariance + eigendecomposition + eigenvalue correction; query =
  pairwise scores.
- `dattri-trak`: TRAK (`dattri.algorithm.trak.TRAKAttributor`), one checkpoint (the base model, like
  every other method here), all parameters, random projection to 512 dimensions (dattri's default),
  model output = the margin log(p / (1 - p)) of the true label (per token, summed, for the LM) and
  correct-probability weights Q = 1 - p. Fit = `cache` (train projections and the kernel solve);
  query = `attribute`.
- `dattri-logra`: LoGra (`dattri.algorithm.logra.LoGraAttributor`): per-layer Kronecker-factored
  projected gradients of every nn.Linear layer, empirical-Fisher preconditioner. Fit = `cache`;
  query = `attribute`.

On `tiny-lm` the training documents are longer than the 64-token block the models see, so every
method here treats each document as its `[eos] + tokens` cut into block-size windows (as the
`graddot` baseline does): the library scores each window as a training example, and a document's score
is the sum over its windows (the influence of a group of examples in these linear approximations;
packed training also sums the token losses of a document). GPT-2's `Conv1D` projections are not
`nn.Linear`, which kronfluence and LoGra need, so those methods run on an exact copy of the base
model with every `Conv1D` replaced by the equivalent `nn.Linear` (outputs are checked to match).

A method that cannot run on a setting raises `PeerUnavailable` with the reason; the harness records it
in `skipped` instead of a traceback.

The adapters live in peers_kronfluence and peers_dattri, their shared inputs in peer_inputs.
"""

from __future__ import annotations

from .peer_inputs import PeerUnavailable, conv1d_to_linear, lm_query_batch, lm_train_windows, sum_windows
from .peers_dattri import LOGRA_DAMPING, LOGRA_PROJ_DIM, TRAK_PROJ_DIM, dattri_logra_scores, dattri_trak_scores
from .peers_kronfluence import kronfluence_scores

__all__ = ["LOGRA_DAMPING", "LOGRA_PROJ_DIM", "PEER_METHODS", "PEER_PACKAGES", "TRAK_PROJ_DIM", "PeerUnavailable", "conv1d_to_linear",
           "dattri_logra_scores", "dattri_trak_scores", "kronfluence_scores", "lm_query_batch", "lm_train_windows",
           "register_all", "sum_windows"]

# method name -> the importable package it needs (the harness skips the method when it is missing)
PEER_PACKAGES = {"kronfluence": "kronfluence", "dattri-trak": "dattri", "dattri-logra": "dattri"}

PEER_METHODS = {
    "kronfluence": kronfluence_scores,
    "dattri-trak": dattri_trak_scores,
    "dattri-logra": dattri_logra_scores,
}


def register_all(registry: dict) -> None:
    """Add the peer adapters to a METHODS registry (the libraries are imported only when run)."""
    registry.update(PEER_METHODS)
