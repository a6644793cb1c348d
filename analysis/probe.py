"""Factorization probe: does DHF put the shared sentiment content where the paper says it should?

On synthetic data the generator's true shared latent is known (``shared``, (N,) or (N, K)). A linear
probe (ridge regression, cross-validated) predicts it from each of FSRF's three representations of the
test split, flattened over the modalities:

- R_ho (``ho``, modality-homogeneous): should carry the shared latent, R^2 near 1;
- R_he (``he``, modality-heterogeneous) and R_n (``noise``): should carry little of it.

R^2 is out-of-fold (5 folds, shuffled with a fixed seed), so a probe that merely memorises scores
near or below 0. Axis legend: N samples, 3 modalities (l, a, v), D representation width.
"""

from __future__ import annotations

import numpy as np

from fsrf.errors import InputError

PARTS = (("ho", "R_ho"), ("he", "R_he"), ("noise", "R_n"))  # npz key, the paper's symbol
ALPHAS = np.logspace(-3, 6, 19)  # wide: a collapsed representation (R_n) needs a strong penalty


def check(arrays: dict[str, np.ndarray], where: str = "representations.npz") -> dict[str, np.ndarray]:
    """The arrays of a representations file, shapes checked: parts (N, 3, D), labels (N,), shared (N,[K])."""
    if "labels" not in arrays:
        raise InputError(where, None, "no 'labels' array")
    n = len(arrays["labels"])
    present = [k for k, _ in PARTS if k in arrays]
    if not present:
        raise InputError(where, None, "none of the arrays ho, he, noise")
    for k in present:
        a = arrays[k]
        if a.ndim != 3 or a.shape[0] != n or a.shape[1] != 3:
            raise InputError(where, k, f"expected shape (N={n}, 3, D), got {a.shape}")
    if "shared" in arrays and arrays["shared"].shape[0] != n:
        raise InputError(where, "shared", f"expected {n} rows, got {arrays['shared'].shape[0]}")
    return arrays


def flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # (N, 3, D) -> (N, 3 * D)


def probe_r2(features: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold R^2 of a ridge probe (penalty chosen by inner CV) from features (N, F) to target.

    Features are divided by their overall standard deviation (one number: a representation's scale says
    nothing about what it encodes), not per dimension: a collapsed representation such as an R_n pushed
    to near-constant by eq (3) has dimensions whose spread is float noise, which per-dimension scaling
    would blow up into out-of-fold R^2 of -100s. A multi-column target is scored by the mean R^2 over
    its columns.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_score

    features = np.asarray(features, dtype=np.float64)
    features = (features - features.mean(0)) / (features.std() + 1e-12)
    model = RidgeCV(alphas=ALPHAS)
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, features, np.asarray(target, dtype=np.float64), cv=cv, scoring="r2")))


def factorization_probe(arrays: dict[str, np.ndarray], *, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """R^2 of the true shared latent from each representation present: {'R_ho': .., 'R_he': .., 'R_n': ..}.

    Raises ``InputError`` when the file has no ``shared`` latent (real data has none).
    """
    arrays = check(arrays)
    if "shared" not in arrays:
        raise InputError("representations.npz", None, "no 'shared' latent (real data): the probe needs synthetic data")
    return {symbol: probe_r2(flat(arrays[k]), arrays["shared"], folds=folds, seed=seed)
            for k, symbol in PARTS if k in arrays}


def embed_2d(arrays: dict[str, np.ndarray], *, method: str = "pca", seed: int = 0,
             max_points: int = 2000) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """2-D embeddings of each representation (Fig. 3) and the labels of the embedded samples.

    ``pca`` (default: fast and deterministic) or ``tsne`` (scikit-learn, ``random_state=seed``). At most
    ``max_points`` samples, a fixed random subset, so that t-SNE stays quick on a large test split.
    Returns ({'R_ho': (M, 2), ...}, labels (M,)).
    """
    arrays = check(arrays)
    labels = np.asarray(arrays["labels"], dtype=np.float64).reshape(-1)
    index = np.arange(len(labels))
    if len(index) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(len(index), max_points, replace=False))
    out = {}
    for k, symbol in PARTS:
        if k not in arrays:
            continue
        x = flat(arrays[k])[index]
        x = (x - x.mean(0)) / (x.std(0) + 1e-12)
        if method == "pca":
            from sklearn.decomposition import PCA

            out[symbol] = PCA(n_components=2, random_state=seed).fit_transform(x)
        elif method == "tsne":
            from sklearn.manifold import TSNE

            perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
            out[symbol] = TSNE(n_components=2, random_state=seed, init="pca", perplexity=perplexity).fit_transform(x)
        else:
            raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    return out, labels[index]
