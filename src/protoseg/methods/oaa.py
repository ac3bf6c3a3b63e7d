"""OAA (Jiang et al., ICCV 2019): the CAM network whose per-image attention maps are accumulated online,
across epochs, into the maps its pseudo labels come from (docs/methods.md section 3c).

The training objective is the plain CAM's; what OAA adds is the accumulation (:mod:`protoseg.ops.oaa`),
kept outside the network: every step's foreground CAMs become 8-bit attention maps on a grid of each
original image (the batch's ``frame`` undoes the crop, rescaling and flip), are gathered from every DDP
rank after the step, and are fused into ``RUN/oaa/<index>.pt`` (:class:`protoseg.prototypes.AttentionStore`)
by the refresh that follows every iteration, on rank 0. ``protoseg.wsss.oaa_cams`` turns the folder into
CAM files for ``seeds-eval`` / ``pseudo-label``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..fields import setting
from ..models.cam import CAMNet
from ..ops.distributed import gather_from_all_ranks
from ..ops.image_frame import to_image_grid
from ..ops.oaa import OAA_FILTERS, attention_maps, passes_filter, quantise
from ..prototypes.attention_store import AttentionStore
from .base import DatasetInfo, RunInfo, build_backbone_from_config
from .cam import ClassificationLosses
from .wsss_base import LR_GROUP_MODES, BaseRecipe, WSSSBase, recipe_of

OAA_FOLDER = "oaa"
DETACHED_BACKLOG = 64
"""Steps whose maps wait for a refresh when no run is attached (tests, benchmarks); older ones are dropped."""


@dataclass
class OAAConfig(BaseRecipe):
    """``model.oaa``: when and what to accumulate; the recipe defaults are the release's (1x / 2x / 10x /
    20x learning rates, Nesterov momentum; VGG-16 has no BatchNorm to freeze)."""

    lr_groups: str = setting("released", choices=LR_GROUP_MODES)
    nesterov: bool = True
    start_epoch: int = setting(1, minimum=0)  # first epoch that accumulates (the release: 1, the second)
    filter: str = setting("top_tags", choices=OAA_FILTERS)  # probability: RCA's release of OAA
    min_probability: float = setting(0.1, minimum=0.0, maximum=1.0)  # of the probability filter
    map_size: int | None = setting(None, minimum=1)  # side of the maps' grid; None: the training CAM's size


class OAAMethod(ClassificationLosses, WSSSBase):
    """CAM training (``loss = cls``) with online attention accumulation.

    Args:
        network: the CAM network (a :class:`CAMNet`, or a plug-in's network).
        recipe: the training recipe.
        start_epoch: the first epoch whose maps are accumulated (epochs of ``iterations_per_epoch``).
        filter / min_probability: which tagged classes' maps are fused
            (:func:`protoseg.ops.oaa.passes_filter`).
        map_size: the accumulated maps' grid, ``map_size x map_size`` over each original image; None: the
            training CAM's ``h x w``.

    The step's maps are kept on the device by :meth:`track` (the forward), gathered from all ranks in
    :meth:`after_step` (no host synchronisation) and written by :meth:`refresh`, which the trainer calls
    after every iteration (``refresh_interval`` 1): rank 0 applies them to the store, the others drop
    them. Without :meth:`attach_run` (no run folder) the store lives in memory and every step counts as an
    epoch of its own.
    """

    name: ClassVar[str] = "oaa"
    section: ClassVar[tuple[str, type]] = ("oaa", OAAConfig)
    reads: ClassVar[tuple[str, ...]] = ("oaa",)
    inputs: ClassVar[tuple[str, ...]] = ("image", "tags", "index", "frame")

    def __init__(
        self,
        network: torch.nn.Module,
        recipe: BaseRecipe | None = None,
        start_epoch: int = 1,
        filter: str = "top_tags",
        min_probability: float = 0.1,
        map_size: int | None = None,
    ) -> None:
        super().__init__(network, recipe)
        if filter not in OAA_FILTERS:
            raise ValueError(f"OAA: filter must be one of {OAA_FILTERS}, got '{filter}'")
        if start_epoch < 0 or (map_size is not None and map_size < 1):
            raise ValueError(f"OAA: need start_epoch >= 0 and map_size >= 1, got {start_epoch}, {map_size}")
        self.start_epoch = start_epoch
        self.filter = filter
        self.min_probability = min_probability
        self.map_size = map_size
        self.iterations_per_epoch = 1
        self.last_epoch: int | None = None
        self.rank = 0
        self.store = AttentionStore(self.num_classes)
        self._tracked: tuple[torch.Tensor, ...] | None = None
        self._staged: deque = deque(maxlen=DETACHED_BACKLOG)

    @classmethod
    def wrap(cls, network: torch.nn.Module, model: Any) -> OAAMethod:
        section = model.oaa
        return cls(
            network,
            recipe_of(section),
            section.start_epoch,
            section.filter,
            section.min_probability,
            section.map_size,
        )

    @classmethod
    def build(cls, model: Any, dataset: DatasetInfo, seed: int = 0, proj_dim: int | None = None) -> OAAMethod:
        classes = cls.output_classes(dataset)
        network = CAMNet(build_backbone_from_config(model), classes, proj_dim, dropout=model.oaa.dropout)
        return cls.wrap(network, model)

    def forward(self, batch: Mapping[str, torch.Tensor], iteration: int = 0) -> dict[str, torch.Tensor]:
        view = self.view(batch["image"])
        self.track(batch, self.network.activate(view.cam))
        return self.single_view_losses(batch, view)

    # -- the accumulation -----------------------------------------------------------------------------
    def grid_size(self, cams: torch.Tensor) -> tuple[int, int]:
        """The accumulated maps' grid for training CAMs ``cams`` ``(B, C, h, w)``."""
        if self.map_size is not None:
            return self.map_size, self.map_size
        return int(cams.shape[-2]), int(cams.shape[-1])

    @torch.no_grad()
    def track(self, batch: Mapping[str, torch.Tensor], cams: torch.Tensor) -> None:
        """This step's 8-bit attention maps of ``cams`` ``(B, C, h, w)`` (foreground CAMs) on the images'
        grids, the tags and the filter's verdicts, kept for :meth:`after_step`."""
        cams = cams.detach().float()
        tags = batch["tags"] > 0.5
        scores = torch.sigmoid(cams.mean(dim=(2, 3)))
        passed = passes_filter(scores, tags.float(), self.filter, self.min_probability)
        maps, _ = to_image_grid(
            attention_maps(cams), batch["frame"], tuple(batch["image"].shape[-2:]), self.grid_size(cams)
        )
        self._tracked = (batch["index"].long(), quantise(maps), tags, passed)

    def epoch_of(self, iteration: int) -> int:
        return iteration // self.iterations_per_epoch

    def after_step(self, iteration: int) -> None:
        """Stage the step's maps from every rank (all ranks alike), when its epoch accumulates."""
        if self._tracked is None:
            return
        tracked, self._tracked = self._tracked, None
        epoch = self.epoch_of(iteration)
        if epoch < self.start_epoch:
            return
        final = self.last_epoch is not None and epoch == self.last_epoch
        self._staged.append((iteration, final, *(gather_from_all_ranks(tensor) for tensor in tracked)))

    def refresh_interval(self, iterations_per_epoch: int) -> int:
        """Every iteration: the staged maps are written before any checkpoint can be saved."""
        return 1

    @torch.no_grad()
    def refresh(self, generator: torch.Generator | None = None) -> None:
        """Fuse the staged maps into the store (rank 0; the other ranks drop their identical copies)."""
        staged = list(self._staged)
        self._staged.clear()
        if self.rank != 0:
            return
        for iteration, final, index, maps, tagged, passed in staged:
            index, maps, tagged, passed = (tensor.cpu() for tensor in (index, maps, tagged, passed))
            for row, image in enumerate(index.tolist()):
                self.store.apply(image, iteration, maps[row], tagged[row], passed[row], final)

    def attach_run(self, run: RunInfo) -> None:
        """Accumulate into ``run.folder / "oaa"``, by the run's epochs (the last one writes every image
        without a map)."""
        self.iterations_per_epoch = max(1, run.iterations_per_epoch)
        self.last_epoch = (run.iterations - 1) // self.iterations_per_epoch
        self.rank = run.rank
        self.store = AttentionStore(self.num_classes, run.folder / OAA_FOLDER)
        self._staged = deque()
        if run.rank == 0:
            self.store.write_meta(run.sample_names)
