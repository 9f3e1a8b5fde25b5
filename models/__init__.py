"""Model definitions that api/, serving/ and registry/ import, torch only (no kernels, no benchmark switches).

`dlrm` (the ranker and its arches), `logreg` (its logistic-regression baseline), `saved` (save
and load a ranker by the kind its file records), `two_tower` (the retrieval model), `classic`
(popularity, item-kNN, matrix factorisation). Importing this package imports no torch.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base class for everything the models package raises on purpose (a ValueError: bad input)."""
