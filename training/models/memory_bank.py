"""The memory bank of a patch kNN: its nearest-row search, the coreset that fills it, its coverage.

Shared by every teacher of ``training.models.patchcore``. The search is one MatMul and one ReduceMin
against a constant bank, so exported graphs need no index library on the device; the coreset is chosen
from every training patch, or from a grid of them turning per image where enough remain
(``candidate_stride``, ``grid_rows``), with memory bounded by a random projection (``StreamedCoreset``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

EAGER_BANK_CHUNK = 32768  # rows searched at once in eager mode (a full bank would need GBs at once)
COVERAGE_QUANTILES = (0.5, 0.95, 0.99, 1.0)
PCA_SAMPLE = 60000  # training patches a projected bank's principal components are computed from
MIN_CANDIDATES_PER_ROW = 8  # a candidate grid is used only where it leaves this many candidates a bank row


class NearestBank(nn.Module):
    """(N, C, h, w) features -> (N, 1, h, w) distance to the nearest bank row.

    ``metric``: "euclidean" (the distance) or "cosine" (|q - b|^2 / 2, which is 1 - cos for unit rows).
    ``rows = 0`` makes a bank whose size is set by ``set_bank`` and by a loaded state (the full bank).
    ``project_to > 0``: queries and bank live in the training patches' top principal components. The
    search costs rows x width, so a narrower bank can hold more rows for the same cost, and on real
    texture covering more good patches mattered more than the discarded low-variance directions
    (docs/accuracy.md, section Bank coverage). Distances are then measured in that subspace.
    """

    def __init__(self, rows: int, dim: int, metric: str = "euclidean", project_to: int = 0) -> None:
        super().__init__()
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        if not 0 <= project_to < dim:
            raise ValueError(f"a projection must be narrower than the {dim}-d features, got {project_to}")
        self.metric = metric
        self.resizable = rows == 0
        self.projected = project_to > 0
        if self.projected:  # principal components of the training patches (set_projection)
            self.register_buffer("proj_mean", torch.zeros(dim))
            self.register_buffer("proj", torch.zeros(dim, project_to))
        self.register_buffer("bank", torch.zeros(rows, project_to or dim))
        self.register_buffer("bank_sqnorm", torch.zeros(rows))

    @torch.no_grad()
    def set_projection(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        self.proj_mean.copy_(mean)
        self.proj.copy_(components)

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """(..., dim) features -> (..., project_to) coordinates in the bank's space (identity if none)."""
        return (rows - self.proj_mean) @ self.proj if self.projected else rows

    @torch.no_grad()
    def set_bank(self, rows: torch.Tensor) -> None:
        if self.resizable and rows.ndim == 2 and rows.shape[1] == self.bank.shape[1]:
            self.bank = torch.empty_like(rows)
            self.bank_sqnorm = torch.empty(rows.shape[0])
        if rows.shape != self.bank.shape:
            raise ValueError(f"bank must be {tuple(self.bank.shape)}, got {tuple(rows.shape)}")
        self.bank.copy_(rows)
        self.bank_sqnorm.copy_(rows.pow(2).sum(dim=1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        if self.resizable and prefix + "bank" in state_dict:  # a full bank: its size comes with it
            rows = state_dict[prefix + "bank"].shape[0]
            self.bank = torch.zeros(rows, self.bank.shape[1])
            self.bank_sqnorm = torch.zeros(rows)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _nearest_d2(self, q: torch.Tensor) -> torch.Tensor:
        """(N, T, C) queries -> (N, T) squared distance to the nearest row."""
        qn = q.pow(2).sum(-1, keepdim=True)  # (N, T, 1)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or len(self.bank) <= EAGER_BANK_CHUNK:
            return (qn - 2.0 * (q @ self.bank.t()) + self.bank_sqnorm).amin(dim=-1)  # (N, T)
        best = None
        flat = q.reshape(-1, q.shape[-1])  # (N*T, C)
        for i in range(0, len(self.bank), EAGER_BANK_CHUNK):  # eager only: the bank in slices
            b, bn = self.bank[i : i + EAGER_BANK_CHUNK], self.bank_sqnorm[i : i + EAGER_BANK_CHUNK]
            d2 = torch.addmm(bn, flat, b.t(), alpha=-2.0).amin(dim=-1)  # |B|^2 - 2 q.B, one fused pass
            best = d2 if best is None else torch.minimum(best, d2)
        return best.view(q.shape[:2]) + qn[..., 0]  # |q|^2 is the same for every row: added after the min

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        q = self.project(f.flatten(2).transpose(1, 2))  # (N, h*w, C or project_to)
        d2 = self._nearest_d2(q).clamp_min(0.0)  # (N, h*w)
        nearest = d2 * 0.5 if self.metric == "cosine" else d2.sqrt()
        return nearest.view(n, 1, h, w)


# --- the coreset -----------------------------------------------------------------------------------------


def candidate_stride(asked: int, patches: int, rows: int) -> int:
    """The grid stride the coreset takes its candidates on: ``asked`` where that still leaves
    ``MIN_CANDIDATES_PER_ROW`` candidates for each of the bank's ``rows`` among the ``patches``, else 1
    (every patch; always for a full bank, ``rows = 0``)."""
    if asked <= 1 or rows <= 0 or patches // (asked * asked) < MIN_CANDIDATES_PER_ROW * rows:
        return 1
    return asked


def grid_rows(f: torch.Tensor, stride: int, first: int) -> torch.Tensor:
    """(B, C, h, w) features -> (rows, C): each image's patches on a ``stride`` grid.

    The grid's offset turns with the image's index (``first`` is the batch's first), so across images
    every position is a candidate. Neighbouring patches of a pooled feature map overlap most of their
    receptive field; the greedy k-center's cost is its candidates times its picks.
    """
    c = f.shape[1]
    if stride == 1:
        return f.permute(0, 2, 3, 1).reshape(-1, c)
    rows = []
    for b in range(len(f)):
        dy, dx = divmod((first + b) % (stride * stride), stride)
        rows.append(f[b, :, dy::stride, dx::stride].reshape(c, -1).t())
    return torch.cat(rows)


def _projection(dim: int, projection_dim: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((dim, projection_dim)).astype(np.float32) / math.sqrt(projection_dim)


def greedy_kcenter(z: np.ndarray, n: int, first: int) -> np.ndarray:
    """Indices of ``n`` rows of ``z`` (M, P) by greedy k-center, starting at row ``first``.

    Each pick is the row farthest from those picked, so rare normal patches survive where a uniform
    sample would drop them and call them anomalies. One matrix-vector product and three in-place passes a
    pick, on preallocated buffers: memory is z plus three M-vectors.
    """
    m = z.shape[0]
    sq = np.einsum("ij,ij->i", z, z)
    nearest = np.full(m, np.inf, dtype=np.float32)
    dist = np.empty(m, dtype=np.float32)
    picked = np.empty(n, dtype=np.int64)
    j = first
    for i in range(n):
        picked[i] = j
        np.dot(z, z[j], out=dist)
        dist *= -2.0
        dist += sq
        dist += sq[j]
        np.minimum(nearest, dist, out=nearest)
        j = int(nearest.argmax())
    return picked


def greedy_coreset(features: torch.Tensor, n: int, projection_dim: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` rows of ``features`` (M, C) chosen by greedy k-center in a random projection.

    The projection (Gaussian, as PatchCore's) keeps the distance ranking (Johnson-Lindenstrauss) at a
    fraction of the cost. All rows in memory; ``StreamedCoreset`` picks the same rows from batches.
    """
    m = features.shape[0]
    if n >= m:
        return torch.arange(m)
    rng = np.random.default_rng(seed)
    proj = _projection(features.shape[1], projection_dim, rng)
    z = np.ascontiguousarray(features.numpy().astype(np.float32, copy=False) @ proj)  # (M, P)
    return torch.from_numpy(greedy_kcenter(z, n, int(rng.integers(m))))


class StreamedCoreset:
    """Greedy k-center over every row of a stream of (B, C) batches, memory bounded by the projection.

    ``add`` projects each batch (kept: M x P float32) and appends its full rows to a float32 spool file;
    ``rows(n)`` runs greedy k-center on the projections and reads the chosen rows back (``n = 0`` or
    ``n >= M``: every row, in order). Same seed, same rows: picks equal ``greedy_coreset`` on the
    concatenated batches.
    """

    def __init__(self, dim: int, projection_dim: int, seed: int = 0) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.proj = _projection(dim, projection_dim, self.rng)
        self.z: list[np.ndarray] = []
        self.spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close(), after rows())
        self.count = 0

    def add(self, batch: torch.Tensor) -> None:
        rows = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}) rows, got {rows.shape}")
        self.z.append(rows @ self.proj)
        self.spool.write(rows.tobytes())
        self.count += len(rows)

    def _read(self, index: np.ndarray | None) -> torch.Tensor:
        self.spool.flush()
        spooled = np.memmap(self.spool, dtype=np.float32, mode="r", shape=(self.count, self.dim))
        out = np.array(spooled if index is None else spooled[np.sort(index)])
        del spooled
        return torch.from_numpy(out)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """Up to ``n`` rows drawn uniformly without replacement (all of them when fewer)."""
        if self.count <= n:
            return self._read(None)
        return self._read(np.random.default_rng(seed).choice(self.count, n, replace=False))

    def chunks(self, size: int) -> Iterable[torch.Tensor]:
        """Every row, in order, ``size`` at a time (read back from the spool)."""
        self.spool.flush()
        spooled = np.memmap(self.spool, dtype=np.float32, mode="r", shape=(self.count, self.dim))
        for i in range(0, self.count, size):
            yield torch.from_numpy(np.array(spooled[i : i + size]))
        del spooled

    def rows(self, n: int) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no patch features were added to the coreset")
        if n == 0 or n >= self.count:
            return self._read(None)
        z = np.ascontiguousarray(np.concatenate(self.z))
        picked = greedy_kcenter(z, n, int(self.rng.integers(self.count)))
        return self._read(picked)

    def close(self) -> None:
        self.spool.close()


def pca_basis(rows: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (C,), components (C, dim)): the top ``dim`` principal directions of ``rows`` (M, C)."""
    x = rows.double()
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    comps = torch.zeros(x.shape[1], dim, dtype=torch.float64)  # fewer rows than dim: the rest stay zero
    kept = min(dim, vt.shape[0])
    comps[:, :kept] = vt[:kept].t()
    return mean.float(), comps.float()


@torch.no_grad()
def coverage(search: NearestBank, features: Iterable[torch.Tensor]) -> dict[str, float]:
    """Quantiles (p50/p95/p99/max) of patches' nearest-bank distances, in the search's own units."""
    d = torch.cat([search(f).flatten() for f in features]).numpy()
    return {f"p{round(q * 100)}" if q < 1 else "max": float(np.quantile(d, q)) for q in COVERAGE_QUANTILES}


def format_quantiles(q: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in q.items())
