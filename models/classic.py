"""Classic top-K recommenders (popularity, item-kNN, EASE, ALS) behind one fold-in `ItemScorer` interface."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import ThreadpoolController, threadpool_limits

from models import ModelError

# One dense similarity block holds about this many cells (float32: 64 MiB), whatever the catalogue.
_BLOCK_CELLS = 1 << 24


class ItemScorer(Protocol):
    """Fits on a (users, items) weight matrix and scores (rows, items) history rows by fold-in.

    Scoring takes history rows, not user ids, so a customer's fresh history at request time or
    a user unseen at fit time is scored the same way. Scores are float32, higher is better,
    deterministic, and nothing is excluded: callers drop seen items (see `top_k`).
    """

    name: str
    n_items: int

    def fit(self, interactions: sp.csr_matrix) -> ItemScorer: ...

    def score(self, history: sp.csr_matrix) -> np.ndarray: ...


def _as_matrix(matrix: sp.spmatrix, n_items: int | None = None, what: str = "interactions",
               copy: bool = True) -> sp.csr_matrix:
    """CSR float32 copy of `matrix`, checked against the fitted catalogue width. copy=False returns
    `matrix` itself when it is that already, with sorted indices and no duplicates (read-only use)."""
    if not sp.issparse(matrix) or matrix.ndim != 2:
        raise ModelError(f"{what} must be a 2-D scipy.sparse matrix (rows, items); got {type(matrix).__name__}")
    if n_items is not None and matrix.shape[1] != n_items:
        raise ModelError(f"{what} has {matrix.shape[1]} item columns; the scorer was fitted on {n_items}")
    if not copy and isinstance(matrix, sp.csr_matrix) and matrix.dtype == np.float32 and matrix.has_canonical_format:
        return matrix
    csr = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    return csr


def _one_row(history: sp.csr_matrix, n_items: int) -> sp.csr_matrix:
    """One history row (1, n_items) as CSR float32, for per-customer contributions."""
    row = _as_matrix(history, n_items, "history", copy=False)
    if row.shape[0] != 1:
        raise ModelError(f"contributions explain one history row at a time; got {row.shape[0]}")
    return row


def _check_fitted(scorer: ItemScorer, fitted: object) -> None:
    if fitted is None:
        raise ModelError(f"{scorer.name}: call fit(interactions) before score(history)")


@dataclass(eq=False)
class Popularity:
    """score(u, i) = sum_v X[v, i]: the item's total interaction weight in the fit data, same for every row."""

    name: str = field(default="popularity", init=False)
    n_items: int = field(default=0, init=False)
    _weights: np.ndarray | None = field(default=None, init=False, repr=False)
    _order: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)  # `order`, once

    def fit(self, interactions: sp.csr_matrix) -> Popularity:
        matrix = _as_matrix(interactions)
        self.n_items = matrix.shape[1]
        self._weights = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()
        self._order = None
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        _check_fitted(self, self._weights)
        rows = _as_matrix(history, self.n_items, "history", copy=False).shape[0]
        return np.tile(self._weights, (rows, 1))

    @property
    def weights(self) -> np.ndarray:
        """(n_items,) float32: every row's score of each item."""
        _check_fitted(self, self._weights)
        return self._weights

    def order(self) -> np.ndarray:
        """Item indices best first, ties to the lower index (`top_k`'s order): every row's scores are the
        same, so `top_k_in_order(order)` is their `top_k` without scanning the catalogue per row."""
        _check_fitted(self, self._weights)
        if self._order is None:
            self._order = np.argsort(-self._weights, kind="stable")
        return self._order


@dataclass(eq=False)
class ItemKNN:
    """Item-based kNN with shrunk cosine similarity (Sarwar et al. 2001; shrink as in Dacrema et al. 2019).

    S[i, j] = x_i . x_j / (||x_i|| ||x_j|| + shrink), x_i the item's column of the *weighted*
    (users, items) matrix, so a purchase counts more than a view; S[j, j] = 0. Each column j keeps
    its `neighbours` largest positive similarities. score = history @ S: (rows, items).
    Similarities are computed `block_columns` items at a time (None: ~64 MiB blocks), so memory is
    O(n_items * block + n_items * neighbours), never dense items x items.
    """

    neighbours: int = 100
    shrink: float = 10.0
    block_columns: int | None = None
    name: str = field(default="item_knn", init=False)
    n_items: int = field(default=0, init=False)
    _similarity: sp.csr_matrix | None = field(default=None, init=False, repr=False)
    _by_candidate: sp.csr_matrix | None = field(default=None, init=False, repr=False, compare=False)  # S^T, for `contributions`

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_by_candidate"] = None  # rebuilt from _similarity on first use: pickles carry S once
        return state

    def fit(self, interactions: sp.csr_matrix) -> ItemKNN:
        if self.neighbours < 1 or self.shrink < 0:
            raise ModelError(f"item_knn needs neighbours >= 1 and shrink >= 0; got {self.neighbours}, {self.shrink}")
        matrix = _as_matrix(interactions)
        n_items = self.n_items = matrix.shape[1]
        by_item = matrix.T.tocsr()  # (items, users): row slices are cheap
        norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel())  # float32
        keep = min(self.neighbours, max(n_items - 1, 1))
        block = self.block_columns or max(1, _BLOCK_CELLS // max(n_items, 1))
        neighbours, targets, vals = [], [], []
        for start in range(0, n_items, block):
            stop = min(start + block, n_items)
            # X^T X is symmetric, so target item j's column is its row: rows keep each target's
            # candidates contiguous for argpartition. Sparse x sparse costs sum over users of
            # (items per user)^2, far below a dense product.
            dots = by_item[start:stop] @ matrix  # (stop - start, items), CSR
            target = np.repeat(np.arange(start, stop), np.diff(dots.indptr))
            # Scale the stored dots only: cheaper than a dense outer product of the norms.
            dots.data /= norms[target] * norms[dots.indices] + (self.shrink + 1e-12)
            dots.data[dots.indices == target] = 0.0  # an item is not its own neighbour
            sim = dots.toarray()
            top = np.argpartition(sim, n_items - keep, axis=1)[:, n_items - keep :]  # (block, keep)
            top_vals = np.take_along_axis(sim, top, axis=1)
            positive = top_vals > 0  # zero similarity carries no evidence: keep S sparse
            neighbours.append(top[positive])
            targets.append(np.broadcast_to(np.arange(start, stop)[:, None], top.shape)[positive])
            vals.append(top_vals[positive])
        self._similarity = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(neighbours), np.concatenate(targets))),
            shape=(n_items, n_items),
        )
        self._by_candidate = None
        return self

    def similarity(self) -> sp.csr_matrix:
        """(items, items) CSR: S[i, j], the similarity of history item i to candidate j (0 off the neighbourhood)."""
        _check_fitted(self, self._similarity)
        return self._similarity

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        _check_fitted(self, self._similarity)
        rows = _as_matrix(history, self.n_items, "history", copy=False)
        return np.asarray((rows @ self._similarity).toarray(), dtype=np.float32)

    def contributions(self, history: sp.csr_matrix, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history item indices, (n_history, len(items)) float32): history[h] * S[h, i], what each of
        one row's history items adds to `score` of each of `items`; columns sum to the scores."""
        _check_fitted(self, self._similarity)
        row = _one_row(history, self.n_items)
        items = np.asarray(items, dtype=np.int64)
        if self._by_candidate is None:  # S^T: a candidate's column (its <= `neighbours` cells) is one slice
            self._by_candidate = self._similarity.T.tocsr()
            self._by_candidate.sort_indices()
        by_candidate = self._by_candidate
        starts, ends = by_candidate.indptr[items], by_candidate.indptr[items + 1]
        lengths = ends - starts
        column = np.repeat(np.arange(len(items)), lengths)  # which of `items` each cell belongs to
        flat = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        seen = by_candidate.indices[flat]  # the history-side item of each cell
        at = np.clip(np.searchsorted(row.indices, seen), 0, max(len(row.indices) - 1, 0))
        hit = (row.indices[at] == seen) if len(row.indices) else np.zeros(len(seen), dtype=bool)
        sim = np.zeros((len(row.indices), len(items)), dtype=np.float32)
        sim[at[hit], column[hit]] = by_candidate.data[flat[hit]]
        return row.indices.astype(np.int64), (row.data[:, None] * sim).astype(np.float32)


@dataclass(eq=False)
class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

    P = (X^T X + l2 I)^-1, B = I - P diag(1 / diag(P)) (so B[i, j] = -P[i, j] / P[j, j], B[j, j] = 0);
    score = history @ B. B is dense (items, items): fitting peaks at about two float64 and one
    float32 items x items matrices (~18 GiB at 30k items), hence `max_items`.
    """

    l2: float = 10_000.0  # chosen on the synthetic shop (bench/quality.py; 500, 2000, 10000 tried)
    max_items: int = 30_000
    name: str = field(default="ease", init=False)
    n_items: int = field(default=0, init=False)
    _weights: np.ndarray | None = field(default=None, init=False, repr=False)

    def fit(self, interactions: sp.csr_matrix) -> EASE:
        matrix = _as_matrix(interactions)
        n_items = matrix.shape[1]
        if n_items > self.max_items:
            raise ModelError(
                f"ease: {n_items} items is above max_items={self.max_items} (B is a dense items x items "
                "matrix); use item_knn or als for this catalogue, or raise max_items if memory allows"
            )
        gram = (matrix.T @ matrix).toarray().astype(np.float64)
        gram[np.diag_indices(n_items)] += self.l2
        precision = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        precision /= -np.diag(precision).copy()  # in place: column j divided by -P[j, j]
        precision[np.diag_indices(n_items)] = 0.0
        self._weights, self.n_items = precision.astype(np.float32), n_items
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        _check_fitted(self, self._weights)
        rows = _as_matrix(history, self.n_items, "history", copy=False)
        return np.asarray(rows @ self._weights, dtype=np.float32)

    def contributions(self, history: sp.csr_matrix, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history item indices, (n_history, len(items)) float32): history[h] * B[h, i], what each of
        one row's history items adds to `score` of each of `items` (negative where B is); columns sum
        to the scores."""
        _check_fitted(self, self._weights)
        row = _one_row(history, self.n_items)
        weights = self._weights[row.indices][:, np.asarray(items, dtype=np.int64)]
        return row.indices.astype(np.int64), (row.data[:, None] * weights).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The process's BLAS libraries, found once: `threadpool_limits` re-reads /proc/self/maps on every
    call (~2 ms), too slow for a per-request fold-in. Created after implicit is imported (at its first use)."""
    return ThreadpoolController()


@dataclass(eq=False)
class ALS:
    """Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) through implicit's CPU ALS.

    Minimises sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + regularization (|x|^2 + |y|^2) with
    p_ui = [X_ui > 0] and c_ui = alpha * X_ui on observed cells, 1 elsewhere (implicit 0.7's
    convention: no "1 +"; the paper used alpha=40, the synthetic shop chose 10). Fit uses implicit's conjugate-gradient
    solver; score folds each history row in with implicit's exact `recalculate_user` least squares
    against the fixed item factors, then returns x_row . y_i. num_threads=1 keeps runs identical on
    a shared box; random_state seeds the initial factors.
    """

    factors: int = 8  # factors, regularization, alpha: chosen on the synthetic shop (bench/quality.py)
    regularization: float = 1.0
    iterations: int = 15
    alpha: float = 10.0
    random_state: int = 0
    num_threads: int = 1
    name: str = field(default="als", init=False)
    n_items: int = field(default=0, init=False)
    _model: AlternatingLeastSquares | None = field(default=None, init=False, repr=False)
    _gram: Any = field(default=None, init=False, repr=False, compare=False)  # (Y as float64, Y^T Y) for `contributions`

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_gram"] = None  # recomputed on first use
        return state

    def fit(self, interactions: sp.csr_matrix) -> ALS:
        matrix = _as_matrix(interactions)
        # implicit parallelises over users itself; a BLAS thread pool inside each solve slows it down.
        with threadpool_limits(1, "blas"):
            self._model, self.n_items = self._fit(matrix), matrix.shape[1]
        self._gram = None
        return self

    def _fit(self, matrix: sp.csr_matrix) -> AlternatingLeastSquares:
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
            dtype=np.float32,
        )
        model.fit(matrix, show_progress=False)  # implicit 0.7 takes (users, items) CSR
        return model

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        _check_fitted(self, self._model)
        rows = _as_matrix(history, self.n_items, "history", copy=False)
        item_factors = self._model.item_factors  # (items, factors)
        if rows.shape[0] == 0:
            return np.zeros((0, self.n_items), dtype=np.float32)
        with _blas_controller().limit(limits=1, user_api="blas"):
            row_factors = self._model.recalculate_user(np.arange(rows.shape[0]), rows)  # (rows, factors)
        return np.asarray(row_factors @ item_factors.T, dtype=np.float32)

    @property
    def item_factors(self) -> np.ndarray:
        """(n_items, factors) float32 item factors y_i of the fitted model."""
        _check_fitted(self, self._model)
        return np.asarray(self._model.item_factors, dtype=np.float32)

    def contributions(self, history: sp.csr_matrix, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history item indices, (n_history, len(items)) float32): the fold-in score split over one
        row's history items (Hu, Koren & Volinsky 2008, section 5). The row's factor is
        x = W sum_h c_h y_h with W = (Y^T Y + sum_h (c_h - 1) y_h y_h^T + regularization I)^-1 and
        c_h = alpha * history[h], so score_i = sum_h c_h (y_h^T W y_i): history item h contributes
        its confidence times its similarity to i in the row's own metric W. Columns sum to `score`
        up to the solver's rounding."""
        _check_fitted(self, self._model)
        row = _one_row(history, self.n_items)
        if self._gram is None:  # per item explained, so computed once: (n_items, factors) float64 and Y^T Y
            y = self.item_factors.astype(np.float64)
            self._gram = (y, y.T @ y)
        y, yty = self._gram
        seen = y[row.indices]  # (n_history, factors)
        confidence = self.alpha * row.data.astype(np.float64)
        gram = yty + seen.T @ ((confidence - 1.0)[:, None] * seen) + self.regularization * np.eye(y.shape[1])
        metric = np.linalg.solve(gram, y[np.asarray(items, dtype=np.int64)].T)  # W y_i, (factors, len(items))
        return row.indices.astype(np.int64), (confidence[:, None] * (seen @ metric)).astype(np.float32)


def multinomial_loss(logits, targets: sp.csr_matrix):  # type: ignore[no-untyped-def]
    """Mult-DAE's objective: minus the weighted log-likelihood of each row's target cells under the
    softmax over the catalogue, per row (Liang et al. 2018)."""
    import torch
    import torch.nn.functional as F

    y = targets.tocoo()
    log_p = F.log_softmax(logits, dim=1)
    picked = log_p[torch.from_numpy(y.row.astype(np.int64)), torch.from_numpy(y.col.astype(np.int64))]
    return -(picked * torch.from_numpy(y.data.astype(np.float32))).sum() / logits.shape[0]


@dataclass(eq=False)
class MultDAE:
    """Denoising autoencoder with a multinomial likelihood (Liang et al. 2018, "Variational Autoencoders for
    Collaborative Filtering", Mult-DAE), in torch.

    A history row x (weighted interactions) is L2-normalised, its stored cells dropped out (fit only), encoded by
    tanh(x W_enc + b) into `hidden` units and decoded to logits over the catalogue; fit maximises
    sum_i x_i log softmax(logits)_i. The decoder's bias and the softmax over the whole catalogue let it
    model "popular and to this user's taste" in one score. score = the logits: (rows, items).
    """

    # Chosen on a validation split of the synthetic shop's training part (NDCG@10): hidden 64, lr 1e-3,
    # 100 epochs 0.1233; hidden 200, 60 epochs 0.1233; lr 3e-3 overfits (0.1121 at 60 epochs); EASE 0.1207.
    hidden: int = 64
    dropout: float = 0.5
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    random_state: int = 0
    name: str = field(default="mult_dae", init=False)
    n_items: int = field(default=0, init=False)
    _state: dict | None = field(default=None, init=False, repr=False)
    _scoring: Any = field(default=None, init=False, repr=False, compare=False)  # `score`'s weight arrays

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_scoring"] = None  # rebuilt from _state on first use: pickles carry the weights once
        return state

    def _net(self, n_items: int):  # type: ignore[no-untyped-def]
        import torch

        return torch.nn.Sequential(torch.nn.Linear(n_items, self.hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(self.hidden, n_items))

    def dropped_hidden(self, unit_rows: sp.csr_matrix, encoder, generator):  # type: ignore[no-untyped-def]
        """The training pass's hidden layer of L2-normalised rows, with input dropout. The encoder's input
        stays sparse: dropping out a zero changes nothing, so only stored cells are dropped."""
        import torch

        x_in = unit_rows.tocoo()
        keep = (torch.rand(x_in.nnz, generator=generator) >= self.dropout).float() / (1.0 - self.dropout)
        sparse_in = torch.sparse_coo_tensor(np.vstack([x_in.row, x_in.col]), torch.from_numpy(x_in.data) * keep,
                                            x_in.shape, check_invariants=False)
        return torch.tanh(torch.sparse.mm(sparse_in, encoder.weight.T) + encoder.bias)

    def fit(self, interactions: sp.csr_matrix) -> MultDAE:
        import torch

        matrix = _as_matrix(interactions)
        n_users, n_items = matrix.shape
        generator = torch.Generator().manual_seed(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = self._net(n_items)
        encoder, decoder = net[0], net[2]
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        unit = sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ matrix  # L2-normalised rows
        rows = torch.from_numpy(np.flatnonzero(np.diff(matrix.indptr) > 0))
        net.train()
        for _ in range(self.epochs):
            order = rows[torch.randperm(len(rows), generator=generator)].numpy()
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                logits = decoder(self.dropped_hidden(unit[batch], encoder, generator))
                loss = multinomial_loss(logits, matrix[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self.keep(net, n_items)

    def keep(self, net, n_items: int) -> MultDAE:  # type: ignore[no-untyped-def]
        """Keeps a trained net's weights as this model's state; scoring arrays are rebuilt on first use."""
        self._state, self.n_items = {k: v.detach().clone() for k, v in net.state_dict().items()}, n_items
        self._scoring = None
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """The decoder's logits of each L2-normalised history row: the net's eval forward pass, in numpy
        over the row's stored cells (an encoder product over the history items only, not the catalogue)."""
        _check_fitted(self, self._state)
        rows = _as_matrix(history, self.n_items, "history", copy=False)
        if self._scoring is None:  # built once: the weights as float32 arrays laid out for the products below
            self._scoring = tuple(np.ascontiguousarray(self._state[k].detach().numpy().T if k.endswith("weight")
                                                       else self._state[k].detach().numpy(), dtype=np.float32)
                                  for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
        encoder, encoder_bias, decoder, decoder_bias = self._scoring  # (items, hidden), (hidden,), (hidden, items), (items,)
        owner = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))  # the row of each stored cell
        norms = np.sqrt(np.bincount(owner, weights=rows.data.astype(np.float64) ** 2, minlength=rows.shape[0]))
        unit = sp.csr_matrix((rows.data / np.maximum(norms, 1e-12).astype(np.float32)[owner], rows.indices,
                              rows.indptr), shape=rows.shape)  # F.normalize's rows
        out = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, rows.shape[0], 1024):
            part = unit if rows.shape[0] <= 1024 else unit[start:start + 1024]  # a slice copies: only when needed
            hidden = np.tanh(part @ encoder + encoder_bias)
            out[start:start + len(hidden)] = hidden @ decoder + decoder_bias
        return out


CLASSIC: dict[str, type[Popularity | ItemKNN | EASE | ALS | MultDAE]] = {
    "popularity": Popularity,
    "item_knn": ItemKNN,
    "ease": EASE,
    "als": ALS,
    "mult_dae": MultDAE,
}


def fit_all(
    interactions: sp.csr_matrix,
    names: Iterable[str] = tuple(CLASSIC),
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, ItemScorer]:
    """Build the named scorers (hyperparameters from `params[name]`, else defaults) and fit each on `interactions`."""
    params = params or {}
    unknown = sorted(set(names) - set(CLASSIC)) + sorted(set(params) - set(CLASSIC))
    if unknown:
        raise ModelError(f"unknown classic scorer(s) {unknown}; choose from {sorted(CLASSIC)}")
    return {name: CLASSIC[name](**params.get(name, {})).fit(interactions) for name in names}


def top_k(scores: np.ndarray, exclude: sp.csr_matrix | None, k: int) -> np.ndarray:
    """(rows, items) scores -> (rows, k) int64 item indices, best first.

    Cells stored in `exclude` (e.g. seen items) are never returned; rows with fewer than k
    eligible items end in -1; equal scores go to the lower item index, so results are reproducible.
    """
    if scores.ndim != 2 or k < 0:
        raise ModelError(f"top_k needs (rows, items) scores and k >= 0; got shape {scores.shape}, k={k}")
    if np.isnan(scores).any():
        raise ModelError("top_k: scores contain NaN; a scorer produced an undefined score")
    n_rows, n_items = scores.shape
    dtype = np.result_type(scores.dtype, np.float32)
    if exclude is not None and exclude.shape != scores.shape:
        raise ModelError(f"top_k: exclude has shape {exclude.shape}, scores {scores.shape}")
    if isinstance(exclude, np.ndarray) and exclude.dtype == bool:
        work = np.where(exclude, np.asarray(-np.inf, dtype=dtype), scores).astype(dtype, copy=False)  # -inf: excluded
    else:
        work = np.array(scores, dtype=dtype)  # a copy: -inf marks excluded
        if exclude is not None:
            work[exclude.nonzero()] = -np.inf
    take = min(k, n_items)
    result = np.full((n_rows, k), -1, dtype=np.int64)
    if take == 0 or n_rows == 0:
        return result
    sampled = np.zeros(n_rows, dtype=bool)
    stride = n_items // (16 * take)  # rows much longer than k: bound each row's k-th largest from a sample
    if stride >= 2:
        sample = work[:, ::stride]
        q = min(sample.shape[1], 2 * -(-take // stride) + 2)  # ~twice the sample's expected share of the top k
        bound = np.partition(sample, sample.shape[1] - q, axis=1)[:, sample.shape[1] - q][:, None]
        rows, items = np.nonzero(work >= bound)
        counts = np.bincount(rows, minlength=n_rows)
        # Exact where the bound kept at least k (then it is at or below the k-th largest, so every top item and
        # every tie of the k-th is a candidate) and few enough to sort; other rows (a sample that missed, ties
        # en masse) take the full pass below.
        sampled = (counts >= take) & (counts <= 8 * take)
        keep = sampled[rows]
        result[sampled, :take] = _first_per_row(work, rows[keep], items[keep], int(sampled.sum()), take)
    rest = np.flatnonzero(~sampled)
    if len(rest):
        part = work[rest]
        threshold = np.partition(part, n_items - take, axis=1)[:, n_items - take][:, None]  # the k-th largest
        above = part > threshold
        at = part == threshold
        room = take - above.sum(axis=1, keepdims=True)
        if np.any(at.sum(axis=1, keepdims=True) > room):  # more ties at the threshold than room: lowest indices first
            at &= np.cumsum(at, axis=1) <= room
        rows, items = np.nonzero(above | at)  # exactly k per row
        result[rest, :take] = _first_per_row(part, rows, items, len(rest), take)
    return result


def _first_per_row(work: np.ndarray, rows: np.ndarray, items: np.ndarray, n_rows: int, take: int) -> np.ndarray:
    """(n_rows, take) item indices: of each row's candidate cells (row-major, at least `take` per row, from
    the rows of `work` that appear, in order), the `take` best by score descending then index ascending;
    -1 for an excluded (-inf) score."""
    values = work[rows, items]
    order = np.lexsort((items, -values, rows))
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])  # where each row begins
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = order[position < take]
    items, values = items[keep].reshape(n_rows, take), values[keep].reshape(n_rows, take)
    return np.where(np.isneginf(values), -1, items)


def top_k_in_order(order: np.ndarray, exclude: sp.csr_matrix | np.ndarray | None, n_rows: int, k: int) -> np.ndarray:
    """`top_k` of `n_rows` rows that share one score vector, from its `order` (every item, best first,
    ties to the lower index: `np.argsort(-scores, kind="stable")`): each row's first k items of `order`
    not stored in `exclude`, -1 padded. Only the head of `order` that can hold them is read."""
    n_items = len(order)
    take = min(k, n_items)
    result = np.full((n_rows, k), -1, dtype=np.int64)
    if take == 0 or n_rows == 0:
        return result
    if exclude is None:
        result[:, :take] = order[:take]
        return result
    if exclude.shape != (n_rows, n_items):
        raise ModelError(f"top_k_in_order: exclude has shape {exclude.shape}, expected {(n_rows, n_items)}")
    if sp.issparse(exclude):
        exclude = exclude.toarray()
    exclude = np.asarray(exclude, dtype=bool)
    head = order[:min(n_items, take + int(exclude.sum(axis=1).max()))]  # holds `take` free items, or all there are
    free = ~exclude[:, head]
    rank = np.cumsum(free, axis=1)  # 1-based position among the row's free items
    r, c = np.nonzero(free & (rank <= take))
    result[r, rank[r, c] - 1] = head[c]
    return result


def index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in the sorted array `sorted_ids` (a catalogue's columns), -1 where absent."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    at = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[at] == ids, at, -1)
