"""RCA's region semantic contrast (eq. 4) and region mixup contrast (eq. 5) against a region memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..prototypes.region_memory import RegionMemory
from .memory_contrast import memory_contrast

_GAMMA_CANDIDATES = 16
REDUCTIONS = ("mean", "released")


def sample_gamma(
    concentration: float,
    count: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``count`` draws from Gamma(concentration, 1) in float32, seeded by ``generator``.

    Marsaglia & Tsang (2000) with a fixed number of candidates per draw (acceptance >= 95% for
    shape >= 1, so all 16 failing has probability < 1e-20; then the mode is returned) and the boost
    ``Gamma(a) = Gamma(a + 1) * U^(1/a)`` for ``a < 1``. Fixed shapes, no host synchronisation.
    """
    if concentration <= 0:
        raise ValueError(f"sample_gamma: concentration must be > 0, got {concentration}")
    shape = concentration if concentration >= 1 else concentration + 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    normal = torch.randn(count, _GAMMA_CANDIDATES, generator=generator, device=device)
    uniform = torch.rand(count, _GAMMA_CANDIDATES, generator=generator, device=device)
    v = (1.0 + c * normal) ** 3
    positive = v > 0
    safe_v = torch.where(positive, v, torch.ones_like(v))
    accept = positive & (
        torch.log(uniform.clamp_min(1e-30)) < 0.5 * normal**2 + d - d * safe_v + d * torch.log(safe_v)
    )
    first = accept.long().argmax(dim=1, keepdim=True)
    draws = (d * safe_v).gather(1, first).squeeze(1)
    draws = torch.where(accept.any(dim=1), draws, torch.full_like(draws, d))
    if concentration < 1:
        boost = torch.rand(count, generator=generator, device=device).clamp_min(1e-30)
        draws = draws * boost.pow(1.0 / concentration)
    return draws


def sample_beta(
    alpha: float, count: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``count`` draws of w ~ Beta(alpha, alpha) as ``G1 / (G1 + G2)`` with Gamma(alpha) draws."""
    first = sample_gamma(alpha, count, generator, device)
    second = sample_gamma(alpha, count, generator, device)
    return first / (first + second).clamp_min(1e-30)


class RegionContrastLoss(nn.Module):
    """Region semantic contrast with region mixup (RCA eqs. 4-5) against a :class:`RegionMemory`.

    For region ``r`` with embedding ``f_r`` and class ``l_r`` (cosine similarity, temperature tau):

    - ``contrast = mean_r L(f_r, l_r)`` with ``L`` the memory InfoNCE of eq. 4: positives = the filled
      slots of class ``l_r``, negatives = the filled slots of every other class;
    - ``mixup``: each region draws a partner ``r-`` uniformly among the valid batch regions of a
      DIFFERENT class whose memory is not empty, and ``w_r ~ Beta(alpha, alpha)``;
      ``f_hat = w f_r + (1 - w) f_r-`` (un-normalised embeddings, as the release) and
      ``mixup = mean_r [ w L(f_hat, l_r) + (1 - w) L(f_hat, l_r-) ]`` (eq. 5). A region without a
      possible partner (one class in the batch) uses ``w = 1``, i.e. its plain contrast term;
    - ``loss = mixup`` (the paper's L_RM-NCE), or ``contrast`` when ``mixup_alpha == 0`` (with mixup
      on, ``contrast`` is computed without gradient, for logging only).
    Computed in float32 with autocast off, whatever the input dtype.

    The returned dict also holds the draws, for inspection: ``partner`` ``(R,)`` (index of each
    region's partner; the region itself when it has none) and ``mix_weight`` ``(R,)`` (w).

    Means run over the regions that are ``valid`` and whose class has >= 1 filled slot (0 when there
    is none): ``reduction="mean"``. ``reduction="released"`` is the release's: the mean over each image's
    counted regions, summed over the images (``images`` gives each region's image), about B times the
    mean (its weight 0.01 at batch size 8 is about 0.08 of the mean). The memory is read detached; the
    release draws its partner from a random image and class, which may be the region's own class (or the
    region itself). ``partner`` / ``mix_weight`` given to :meth:`forward` replace the draws (parity
    checks against the release's own draws).
    """

    def __init__(self, temperature: float = 0.07, mixup_alpha: float = 8.0, reduction: str = "mean") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"RegionContrastLoss: temperature must be > 0, got {temperature}")
        if mixup_alpha < 0:
            raise ValueError(f"RegionContrastLoss: mixup_alpha must be >= 0, got {mixup_alpha}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"RegionContrastLoss: reduction must be one of {REDUCTIONS}, got '{reduction}'")
        self.temperature = temperature
        self.mixup_alpha = mixup_alpha
        self.reduction = reduction

    def forward(
        self,
        region_embeddings: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        memory: RegionMemory,
        generator: torch.Generator | None = None,
        images: torch.Tensor | None = None,
        partner: torch.Tensor | None = None,
        mix_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``region_embeddings (R, D)``, ``labels (R,)`` int64, ``valid (R,)`` bool -> dict of scalars.

        ``images`` ``(R,)`` int64: each region's image (``reduction="released"`` needs it); ``partner``
        ``(R,)`` int64 and ``mix_weight`` ``(R,)``: the mixup draws to use instead of drawing them."""
        rows = region_embeddings.shape[0]
        if region_embeddings.dim() != 2 or region_embeddings.shape[1] != memory.dim:
            raise ValueError(
                f"RegionContrastLoss: region_embeddings must be (R, {memory.dim}), "
                f"got {tuple(region_embeddings.shape)}"
            )
        if labels.shape != (rows,) or valid.shape != (rows,):
            raise ValueError(
                f"RegionContrastLoss: labels {tuple(labels.shape)} and valid {tuple(valid.shape)} "
                f"must be ({rows},)"
            )
        if self.reduction == "released" and (images is None or images.shape != (rows,)):
            raise ValueError(f"RegionContrastLoss: reduction='released' needs images of shape ({rows},)")
        if (partner is None) != (mix_weight is None):
            raise ValueError("RegionContrastLoss: give both partner and mix_weight, or neither")
        draws = None if partner is None else (partner.long(), mix_weight.float())
        # float32 even under autocast (which would run the similarity einsums in half precision)
        with torch.autocast(device_type=region_embeddings.device.type, enabled=False):
            return self._losses(
                region_embeddings.float(), labels.long(), valid.bool(), memory, generator, images, draws
            )

    def _losses(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor,
        memory: RegionMemory,
        generator: torch.Generator | None,
        images: torch.Tensor | None = None,
        draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        rows = embeddings.shape[0]
        device = embeddings.device
        # a fresh normalised copy: later in-place memory writes cannot touch what autograd saved
        banks = [(F.normalize(memory.memory.detach().float(), dim=2), memory.valid)]
        class_filled = memory.count > 0

        def contrast(queries: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            """``sum_r scale[r] * L(queries[r], targets[r])`` with L the memory InfoNCE of eq. 4."""
            return memory_contrast(
                F.normalize(queries, dim=1), targets, banks, self.temperature, self.temperature,
                anchor_scale=scale,
            )  # fmt: skip

        counted = valid & class_filled[labels]
        weight = counted.to(embeddings.dtype)
        if self.reduction == "released":  # each image's mean, summed over the images
            same_image = images.unsqueeze(0) == images.unsqueeze(1)
            weight = weight / (same_image & counted.unsqueeze(0)).sum(dim=1).clamp_min(1).to(weight.dtype)
        else:
            weight = weight / weight.sum().clamp_min(1.0)
        if self.mixup_alpha == 0:
            plain = contrast(embeddings, labels, weight)
            return {
                "loss": plain,
                "contrast": plain,
                "mixup": plain,
                "partner": torch.arange(rows, device=device),
                "mix_weight": torch.ones(rows, device=device),
            }

        if draws is None:
            # partner: uniform among eligible regions = argmax of i.i.d. uniform scores over them
            eligible = (labels.unsqueeze(0) != labels.unsqueeze(1)) & counted.unsqueeze(0)
            scores = torch.rand(rows, rows, generator=generator, device=device)
            has_partner = eligible.any(dim=1)
            partner = scores.masked_fill(~eligible, -1.0).argmax(dim=1)
            partner = torch.where(has_partner, partner, torch.arange(rows, device=device))
            mix_weight = sample_beta(self.mixup_alpha, rows, generator, device)
            mix_weight = torch.where(has_partner, mix_weight, torch.ones_like(mix_weight))
        else:
            partner, mix_weight = (tensor.to(device) for tensor in draws)
        mixed = mix_weight.unsqueeze(1) * embeddings + (1.0 - mix_weight.unsqueeze(1)) * embeddings[partner]
        # eq. 5: w L(f_hat, l) + (1 - w) L(f_hat, l-), the mixed query contrasted once per target
        mixup = contrast(
            torch.cat([mixed, mixed]),
            torch.cat([labels, labels[partner]]),
            torch.cat([mix_weight * weight, (1.0 - mix_weight) * weight]),
        )
        with torch.no_grad():  # the un-mixed contrast is only logged
            plain = contrast(embeddings, labels, weight)
        return {
            "loss": mixup,
            "contrast": plain,
            "mixup": mixup,
            "partner": partner,
            "mix_weight": mix_weight,
        }
