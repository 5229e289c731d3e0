"""Classifier calibration with virtual representations (CCVR; Luo et al., NeurIPS 2021).

Under label skew the federated classifier drifts: every cohort pulls the decision
threshold toward its own majority, and the global adapter of the last round carries
whatever its cohort left (``bench/calibration.py`` measures it on SST-2: the share of
sentences predicted positive swings between 0.02 and 0.96 over rounds, and the best
threshold is worth up to 13 points in a bad round). CCVR repairs the last layer after
training, with statistics instead of data:

1. each client runs the global adapter over its own shard and reports, per class, the
   number of examples, the mean and the scatter matrix of the features that enter the
   output layer (:func:`feature_stats`) — sums, so the server can only combine them;
2. the server merges them into per-class Gaussians of the whole federation
   (:func:`merge_feature_stats`, exact: Chan et al.'s pairwise update);
3. it samples virtual features from those Gaussians, as many per class as the clients
   hold, and retrains the output layer on them (:func:`fit_output_layer`).

Only the output layer changes; the body (LoRA, pooler) is untouched. The statistics are a
new channel of information about client data (class means and covariances of features),
so calibration is off by default and not yet covered by secure aggregation or DP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedpeft.errors import UpdateRejected
from fedpeft.tensors import Tensors

#: suffixes of the three statistics a client reports, after the output layer's module name
STAT_SUFFIXES = ("class_count", "class_mean", "class_scatter")


def feature_stats(module: str, features: np.ndarray, labels: np.ndarray, classes: int) -> Tensors:
    """Per-class count [K], mean [K, d] and scatter Σ(x − μ)(x − μ)ᵀ of ``features`` [n, d].

    Named ``{module}.class_count`` etc., ``module`` being the output layer the features
    enter, so the server knows which parameters the statistics calibrate. The symmetric
    scatter travels as its upper triangle, [K, d(d+1)/2] (:func:`unpack_symmetric`).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features [n, d] and labels [n] expected, got {x.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes})")
    d = x.shape[1]
    count = np.zeros(classes, dtype=np.float64)
    mean = np.zeros((classes, d), dtype=np.float64)
    scatter = np.zeros((classes, d, d), dtype=np.float64)
    for c in range(classes):
        xc = x[y == c]
        count[c] = len(xc)
        if len(xc):
            mean[c] = xc.mean(axis=0)
            centred = xc - mean[c]
            scatter[c] = centred.T @ centred
    rows, cols = np.triu_indices(d)
    packed = scatter[:, rows, cols]
    names = [f"{module}.{s}" for s in STAT_SUFFIXES]
    return {n: v.astype(np.float32) for n, v in zip(names, (count, mean, packed), strict=True)}


def unpack_symmetric(packed: np.ndarray, d: int) -> np.ndarray:
    """[..., d(d+1)/2] upper triangles (row-major) → [..., d, d] symmetric matrices."""
    rows, cols = np.triu_indices(d)
    out = np.zeros((*packed.shape[:-1], d, d), dtype=np.float64)
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


def stats_module(stats: Mapping[str, np.ndarray]) -> str:
    """The output layer's module name that a client's statistics are named after."""
    modules = {name.rsplit(".", 1)[0] for name in stats}
    suffixes = {name.rsplit(".", 1)[-1] for name in stats}
    if len(modules) != 1 or suffixes != set(STAT_SUFFIXES):
        raise ValueError(f"expected {{module}}.{{{','.join(STAT_SUFFIXES)}}}, got {sorted(stats)}")
    return modules.pop()


def check_feature_stats(
    stats: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], client_id: int
) -> str:
    """Validate one client's statistics against the adapter; returns the module name."""
    try:
        module = stats_module(stats)
    except ValueError as exc:
        raise UpdateRejected(client_id, str(exc)) from None
    weight = shapes.get(f"{module}.weight")
    if weight is None or len(weight) != 2:
        raise UpdateRejected(client_id, f"{module} is not a linear layer of the adapter")
    classes, dim = weight
    count, mean, scatter = (stats[f"{module}.{s}"] for s in STAT_SUFFIXES)
    expected = {
        "count": (classes,),
        "mean": (classes, dim),
        "scatter": (classes, dim * (dim + 1) // 2),
    }
    for (what, shape), value in zip(expected.items(), (count, mean, scatter), strict=True):
        if value.shape != shape:
            raise UpdateRejected(client_id, f"class {what} has shape {value.shape}, not {shape}")
        if not np.all(np.isfinite(value)):
            raise UpdateRejected(client_id, f"class {what} holds NaN/Inf")
    if np.any(count < 0) or np.any(count != np.round(count)):
        raise UpdateRejected(client_id, "class counts must be whole and non-negative")
    return module


def merge_feature_stats(
    stats: Sequence[Mapping[str, np.ndarray]], module: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled per-class count, mean and (unbiased) covariance of all clients' features.

    Exact, in float64: the mean is the count-weighted mean of the client means and the
    scatter adds each client's scatter and n_i·(μ_i − μ)(μ_i − μ)ᵀ (Chan et al. 1979).
    """
    counts = np.stack([np.asarray(s[f"{module}.class_count"], np.float64) for s in stats])
    means = np.stack([np.asarray(s[f"{module}.class_mean"], np.float64) for s in stats])
    total = counts.sum(axis=0)  # [K]
    weights = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    mean = np.einsum("ck,ckd->kd", weights, means)
    scatter = np.zeros((len(total), means.shape[2], means.shape[2]), dtype=np.float64)
    for s, n, m in zip(stats, counts, means, strict=True):
        gap = m - mean  # [K, d]
        scatter += unpack_symmetric(np.asarray(s[f"{module}.class_scatter"]), means.shape[2])
        scatter += n[:, None, None] * gap[:, :, None] * gap[:, None, :]
    dof = np.maximum(total - 1.0, 1.0)
    return total, mean, scatter / dof[:, None, None]


def sample_virtual_features(
    count: np.ndarray,
    mean: np.ndarray,
    cov: np.ndarray,
    *,
    seed: int,
    per_class_cap: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws from N(μ_c, Σ_c), as many per class as the federation holds (capped)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, n in enumerate(count):
        n = int(min(n, per_class_cap))
        if n == 0:
            continue  # a class no client holds: nothing to calibrate it with
        values, vectors = np.linalg.eigh((cov[c] + cov[c].T) / 2)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))  # Σ = root · rootᵀ, PSD-safe
        z = rng.standard_normal((n, len(values)))
        xs.append(mean[c] + z @ root.T)
        ys.append(np.full(n, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def fit_output_layer(
    weight: np.ndarray,
    bias: np.ndarray | None,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 256,
    bias_steps: int = 200,
    bias_lr: float = 0.1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Retrain ``logits = x·Wᵀ + b`` on (virtual) features, starting from the given W, b.

    First the bias alone, full batch (``bias_steps`` of Adam at ``bias_lr``): a drifted
    threshold can be several logits off, more than the joint steps could move it. Then W
    and b together, ``steps`` mini-batches of Adam at ``lr`` — CCVR's short retraining,
    which the starting head regularises.
    """
    import torch

    w = torch.tensor(weight, dtype=torch.float32, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=torch.float32, requires_grad=True)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def loss_on(idx: torch.Tensor | slice) -> torch.Tensor:
        logits = x[idx] @ w.T + (0.0 if b is None else b)
        return torch.nn.functional.cross_entropy(logits, y[idx])

    if b is not None and bias_steps > 0:
        optimizer = torch.optim.Adam([b], lr=bias_lr)
        for _ in range(bias_steps):
            optimizer.zero_grad(set_to_none=True)
            loss_on(slice(None)).backward()
            optimizer.step()
        w.grad = None
    optimizer = torch.optim.Adam([w] if b is None else [w, b], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss_on(idx).backward()
        optimizer.step()
    new_bias = None if b is None else b.detach().numpy().astype(np.float32)
    return w.detach().numpy().astype(np.float32), new_bias
