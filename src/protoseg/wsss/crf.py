"""Optional dense-CRF refinement (Kraehenbuehl & Koltun 2011) of pseudo-label probabilities.

Uses the ``pydensecrf`` module, which the PyPI package ``pydensecrf2`` provides (source only: it
builds with a C++ compiler in about a minute; ``pip install pydensecrf2``). It is deliberately not a
dependency of protoseg: everything else works without it.
"""

from __future__ import annotations

import numpy as np

CRF_PACKAGE = "pydensecrf2"
PROBABILITY_FLOOR = 1e-5


def dense_crf_available() -> bool:
    """Whether ``pydensecrf.densecrf`` can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def require_dense_crf() -> None:
    """``RuntimeError`` telling which package to install when no dense-CRF package is importable."""
    if not dense_crf_available():
        raise RuntimeError(
            f"dense-CRF refinement needs the 'pydensecrf' module: `pip install {CRF_PACKAGE}` "
            "(it compiles from source and needs a C++ compiler), or run without CRF"
        )


def refine_with_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 10.0,
) -> np.ndarray:
    """Mean-field dense-CRF inference with unary ``-log(p)`` and Gaussian + bilateral pairwise terms.

    Defaults are PSA's / IRN's CRF settings for CAM refinement (sxy 3 / compat 3 smoothness kernel,
    sxy 80 / srgb 13 / compat 10 appearance kernel, 10 iterations).

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (not normalised).
        probabilities: ``(L, H, W)`` per-label probabilities (rows need not sum to 1; floored at 1e-5).

    Returns:
        ``(L, H, W)`` float32 refined marginals; with ``iterations=0`` they are the normalised input.
    """
    require_dense_crf()
    import pydensecrf.densecrf as densecrf

    image = np.asarray(image)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    if probabilities.ndim != 3 or probabilities.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probabilities shape {probabilities.shape} does not match image shape {image.shape}"
        )
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    num_labels, height, width = probabilities.shape
    if num_labels == 1:
        return np.ones_like(probabilities)
    unary = -np.log(np.clip(probabilities, PROBABILITY_FLOOR, None)).reshape(num_labels, -1)
    crf = densecrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image), compat=bilateral_compat
    )
    marginals = crf.inference(iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)
