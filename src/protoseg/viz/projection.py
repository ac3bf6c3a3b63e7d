"""2-D projections of embeddings: PCA (exact SVD, always available) and t-SNE (scikit-learn, optional)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

METHODS = ("pca", "tsne")


@dataclass
class Projection:
    """``points`` ``(N, 2)`` and ``extra`` ``(M, 2)`` (e.g. the prototypes) in the same plane;
    ``axis_names`` for the plot (PCA: with the share of variance each component explains)."""

    points: torch.Tensor
    extra: torch.Tensor | None
    axis_names: tuple[str, str]


def pca_2d(points: torch.Tensor, extra: torch.Tensor | None = None) -> Projection:
    """Project ``points`` ``(N, D)`` on their top-2 principal axes (fit on ``points`` only, float64).

    ``y = (x - mean) @ V[:2].T`` with V the right singular vectors of the centred points; each axis'
    sign is fixed so that its largest-magnitude coordinate is positive (deterministic output).
    ``extra`` ``(M, D)`` is projected with the same mean and axes.
    """
    if points.dim() != 2 or points.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 points (N, D), got shape {tuple(points.shape)}")
    data = points.double()
    mean = data.mean(dim=0, keepdim=True)
    _, singular, right = torch.linalg.svd(data - mean, full_matrices=False)
    axes = right[:2]
    if axes.shape[0] < 2:  # D == 1: a flat second axis
        axes = torch.cat([axes, torch.zeros_like(axes)])
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    variance = singular.square()
    share = (variance[:2] / variance.sum().clamp_min(1e-300)).tolist() + [0.0]
    projected_extra = None if extra is None else ((extra.double() - mean) @ axes.t()).float()
    return Projection(
        points=((data - mean) @ axes.t()).float(),
        extra=projected_extra,
        axis_names=(f"PC 1 ({100 * share[0]:.1f}% of variance)", f"PC 2 ({100 * share[1]:.1f}% of variance)"),
    )


def require_tsne():
    """scikit-learn's ``TSNE`` class; ``ValueError`` saying how to get it (or to use PCA) when missing."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ValueError(
            "--method tsne needs scikit-learn, which is not installed: `pip install scikit-learn`, "
            "or use --method pca"
        ) from None
    return TSNE


def tsne_2d(points: torch.Tensor, extra: torch.Tensor | None = None, seed: int = 0) -> Projection:
    """t-SNE of ``points`` and ``extra`` embedded together (t-SNE cannot place new points later).

    Needs scikit-learn (:func:`require_tsne`).
    """
    TSNE = require_tsne()  # noqa: N806 - a class
    together = points if extra is None else torch.cat([points, extra])
    perplexity = float(min(30.0, max(2.0, (together.shape[0] - 1) / 3)))
    embedded = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(
        together.double().numpy()
    )
    embedded = torch.from_numpy(embedded).float()
    count = points.shape[0]
    return Projection(
        points=embedded[:count],
        extra=None if extra is None else embedded[count:],
        axis_names=("t-SNE 1", "t-SNE 2"),
    )


def project_2d(
    points: torch.Tensor, extra: torch.Tensor | None = None, method: str = "pca", seed: int = 0
) -> Projection:
    """:func:`pca_2d` or :func:`tsne_2d` by name."""
    if method == "pca":
        return pca_2d(points, extra)
    if method == "tsne":
        return tsne_2d(points, extra, seed)
    raise ValueError(f"unknown projection method '{method}' (valid: {', '.join(METHODS)})")
