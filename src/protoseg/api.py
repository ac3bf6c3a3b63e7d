"""The public Python API: load a trained model, predict with it, look inside it, build one in code.

    import protoseg

    model = protoseg.load("runs/demo")                  # a run folder or a checkpoint file
    labels = model.predict("image.jpg")                  # (H, W) uint8 class indices, as `protoseg predict`
    labels = model.predict("image.jpg", tta=True)        # multi-scale + flip
    logits = model.logits(batch)                         # (B, C, H, W), batch: normalised (B, 3, H, W)
    maps = model.similarity("image.jpg")                 # (1, C, K, h, w) per-prototype similarity maps
    model.export("model.onnx")                           # ONNX; see protoseg.export

    model = protoseg.create_model("protoseg", num_classes=21, backbone="resnet50")

Inputs (``inputs`` below) are one of: an image file or a folder of images (``str`` / ``Path``), a
``PIL.Image``, a numpy array of RGB pixel values in 0..255 (``(H, W, 3)`` or a batch ``(B, H, W, 3)``),
a torch tensor already normalised like the training images (``(3, H, W)`` or ``(B, 3, H, W)``), or a
list of these (one image each). Pictures and arrays get the run's preprocessing (``data.mean`` /
``data.std``). One image gives one result, a batch a batched result, a folder or a list a list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .config import Config, config_from_dict, config_to_dict, load_config, parse_override
from .data.palette import voc_palette
from .engine.device import resolve_device
from .engine.loading import find_checkpoint, load_trained_method
from .engine.predict import collect_images, load_image_tensor, predict_files
from .export import DEFAULT_OPSET, ExportResult, export_model
from .export.metadata import run_metadata
from .methods import METHODS, DatasetInfo, Method, build_method, method_class
from .models.heads.protoseg import ProtoSegHead
from .models.segmentor import Segmentor
from .ops.inference import TTA_SCALES, InferenceSettings, predict_probabilities
from .wsss.cam_inference import multiscale_cam

ONE, BATCH, MANY = "one", "batch", "many"


def list_methods() -> list[str]:
    """The ``model.method`` names :func:`create_model` accepts."""
    return list(METHODS)


class Model(nn.Module):
    """A protoseg method with what is needed to use it: its config, classes and preprocessing.

    ``model(images)`` with normalised ``images`` ``(B, 3, H, W)`` returns the logits ``(B, C, H, W)``
    at the input size (segmentors) or the raw foreground CAMs ``(B, C, h, w)`` (CAM networks).
    Prediction methods run in eval mode without gradients and restore the mode afterwards.

    Attributes:
        method: the :class:`~protoseg.methods.Method` (``method(batch)`` gives the training losses,
            ``method.after_step(i)`` the updates after an optimiser step).
        network: what inference runs (``method.network``).
        config: the run's :class:`~protoseg.config.Config`.
        class_names, palette: one name and one RGB colour per predicted class.
        settings: the run's evaluation :class:`~protoseg.ops.inference.InferenceSettings`
            (``eval.scales`` / ``flip`` / ``mode`` / ``crop_size`` / ``stride``).
        checkpoint: the file the weights came from (None for :func:`create_model`).
    """

    def __init__(
        self,
        method: Method,
        config: Config,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        has_background: bool = False,
        checkpoint: Path | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.config = config
        self.class_names = list(class_names)
        self.palette = [list(colour) for colour in palette]
        self.has_background = has_background
        self.checkpoint = checkpoint
        self.settings = InferenceSettings.from_config(config.eval, config.data.crop_size)

    # -- what it is ---------------------------------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        return self.method.network

    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def num_classes(self) -> int:
        """Classes the dataset has (background included where there is one)."""
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def is_segmentor(self) -> bool:
        return isinstance(self.network, Segmentor)

    def extra_repr(self) -> str:
        return (
            f"method={self.method_name}, classes={self.num_classes}, "
            f"backbone={self.config.model.backbone.name}, checkpoint={self.checkpoint}"
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_segmentor:
            return self.network.predict(images)
        return self.network.cams(images)

    # -- inputs -------------------------------------------------------------------------------------
    def preprocess(self, image: Any) -> torch.Tensor:
        """One picture (file, ``PIL.Image``, ``(H, W, 3)`` array) -> normalised ``(1, 3, H, W)`` on the
        model's device; a tensor is taken as normalised already (``(3, H, W)`` or ``(B, 3, H, W)``)."""
        mean, std = self.config.data.mean, self.config.data.std
        if isinstance(image, torch.Tensor):
            tensor = image[None] if image.dim() == 3 else image
            if tensor.dim() != 4 or tensor.shape[1] != 3:
                raise ValueError(
                    f"an image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}"
                )
            return tensor.float().to(self.device)
        if isinstance(image, (str, Path)):
            if not Path(image).is_file():
                raise FileNotFoundError(f"image file not found: {image}")
            return load_image_tensor(Path(image), mean, std)[1].to(self.device)
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim == 3 and image.shape[-1] == 3:
                image = image[None]
            if image.ndim != 4 or image.shape[-1] != 3:
                raise ValueError(
                    f"an image array must be RGB pixels (H, W, 3) or (B, H, W, 3), got shape {image.shape}"
                )
            array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(0, 3, 1, 2)
            array = (array - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            return array.contiguous().to(self.device)
        raise ValueError(
            f"cannot read an image from a {type(image).__name__} (valid: a file or folder path, a PIL.Image, "
            "a numpy (H, W, 3) / (B, H, W, 3) array, a normalised (3, H, W) / (B, 3, H, W) tensor, a list)"
        )

    def _batches(self, inputs: Any) -> tuple[Iterator[torch.Tensor], str]:
        """The normalised ``(B, 3, H, W)`` tensors of ``inputs``, read one at a time as they are used, and
        how to shape the results: ``one`` (unbatched), ``batch`` (batched) or ``many`` (a list)."""
        if isinstance(inputs, (list, tuple)):
            return self._each(inputs), MANY
        if isinstance(inputs, (str, Path)) and Path(inputs).is_dir():
            return (self.preprocess(path) for path in collect_images([inputs])), MANY
        batched = (isinstance(inputs, torch.Tensor) and inputs.dim() == 4) or (
            isinstance(inputs, np.ndarray) and inputs.ndim == 4
        )
        return iter([self.preprocess(inputs)]), BATCH if batched else ONE

    def _each(self, inputs: Sequence[Any]) -> Iterator[torch.Tensor]:
        for item in inputs:
            tensors, kind = self._batches(item)
            if kind == BATCH:
                raise ValueError("a list of inputs holds single images (or folders), not batches")
            yield from tensors

    @staticmethod
    def _shape(results: list[Any], kind: str) -> Any:
        if kind == BATCH:
            return results[0]
        if kind == ONE:
            return results[0][0]
        return [result[0] for result in results]

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _segmentor(self, what: str) -> Segmentor:
        if not self.is_segmentor:
            raise ValueError(
                f"{what} needs a segmentor; this model is a weakly supervised "
                f"model.method={self.method_name} CAM network: use model.cams(...)"
            )
        return self.network

    def _prototype_head(self, what: str) -> ProtoSegHead:
        head = getattr(self._segmentor(what), "head", None)
        head = head if isinstance(head, ProtoSegHead) else getattr(head, "protoseg", None)
        if not isinstance(head, ProtoSegHead):
            raise ValueError(
                f"{what} needs prototypes; model.method={self.method_name} has a "
                f"{type(self.network.head).__name__} (prototype methods: protoseg, protoseg_contrast)"
            )
        return head

    def inference_settings(self, tta: bool = False, **options: Any) -> InferenceSettings:
        """The run's evaluation settings; ``tta=True``: :data:`TTA_SCALES` + flip; ``options``
        (``scales``, ``flip``, ``mode``, ``window``, ``stride``) replace single fields."""
        settings = self.settings
        if tta:
            settings = replace(settings, scales=TTA_SCALES, flip=True)
        return replace(settings, **options) if options else settings

    def _run(self, inputs: Any, function: Any) -> Any:
        """``function`` on each normalised batch of ``inputs`` in eval mode, results shaped as the inputs."""
        batches, kind = self._batches(inputs)
        with self._evaluating():
            return self._shape([function(images) for images in batches], kind)

    # -- predictions --------------------------------------------------------------------------------
    def probabilities(
        self, inputs: Any, *, tta: bool = False, settings: InferenceSettings | None = None, **options: Any
    ) -> Any:
        """Class probabilities ``(B, C, H, W)`` at the input size, averaged over the test-time views.

        ``settings`` (an :class:`InferenceSettings`), or ``tta`` and the keyword ``options`` of
        :meth:`inference_settings`, choose single-scale, multi-scale + flip or sliding window; by
        default the run's own ``eval`` settings.
        """
        settings = settings or self.inference_settings(tta, **options)
        views = len(settings.scales) * (2 if settings.flip else 1)
        return self._run(inputs, lambda images: self._summed(images, settings) / views)

    def _summed(self, images: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
        """Softmax probabilities summed over the views ``(B, C, H, W)`` (what ``protoseg predict`` sums)."""
        network = self._segmentor("prediction")
        return predict_probabilities(network.predict, images, network.num_classes, settings)

    def predict(
        self, inputs: Any, *, tta: bool = False, settings: InferenceSettings | None = None, **options: Any
    ) -> Any:
        """Class indices, uint8 numpy ``(H, W)`` per image (``(B, H, W)`` for a batch, a list for a folder
        or list): the argmax of the probabilities summed over the test-time views, exactly what
        ``protoseg predict`` writes. Settings as in :meth:`probabilities`."""
        settings = settings or self.inference_settings(tta, **options)
        return self._run(
            inputs, lambda images: self._summed(images, settings).argmax(1).cpu().numpy().astype(np.uint8)
        )

    def logits(self, inputs: Any) -> Any:
        """Single-scale logits ``(B, C, H, W)`` at the input size (``Segmentor.predict``)."""
        return self._run(inputs, self._segmentor("logits").predict)

    def features(self, inputs: Any) -> Any:
        """The head's input, the decoder features ``(B, Cin, h, w)`` at feature resolution."""
        network = self._segmentor("features")
        return self._run(inputs, lambda images: network.decoder(network.backbone(images)))

    def embeddings(self, inputs: Any) -> Any:
        """Pixel embeddings ``(B, D, h, w)`` at feature resolution: for a ProtoSeg head the unit-norm
        embeddings compared with the prototypes; for other heads the decoder features (:meth:`features`)."""
        head = self.network.head if self.is_segmentor else None
        head = head if isinstance(head, ProtoSegHead) else getattr(head, "protoseg", None)
        if not isinstance(head, ProtoSegHead):
            return self.features(inputs)
        return self._run(inputs, lambda images: self._embed(head, images))

    def _embed(self, head: ProtoSegHead, images: torch.Tensor) -> torch.Tensor:
        features = self.network.decoder(self.network.backbone(images))
        batch, _, height, width = features.shape
        flat = head.embed(features)  # (B * h * w, D), pixels in (b, y, x) order
        return flat.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()

    def similarity(self, inputs: Any) -> Any:
        """Per-prototype similarity maps ``S[b, c, k, y, x] = <x_{b,y,x}, p_{c,k}>`` ``(B, C, K, h, w)``
        (cosine similarities, feature resolution); the head scores class c by ``max_k`` of them (then its
        LayerNorm). ProtoSeg heads only."""
        head = self._prototype_head("similarity maps")

        def maps(images: torch.Tensor) -> torch.Tensor:
            embeddings = self._embed(head, images)
            batch, dim, height, width = embeddings.shape
            similarities = head.bank.similarities(embeddings.permute(0, 2, 3, 1).reshape(-1, dim))
            shaped = similarities.view(batch, height, width, head.num_classes, head.num_prototypes)
            return shaped.permute(0, 3, 4, 1, 2).contiguous()

        return self._run(inputs, maps)

    @property
    def prototypes(self) -> torch.Tensor:
        """The class prototypes ``(C, K, D)``, unit norm (ProtoSeg heads only)."""
        return self._prototype_head("prototypes").bank.prototypes

    def cams(
        self,
        inputs: Any,
        tags: torch.Tensor | Sequence[float] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> Any:
        """Normalised foreground CAMs ``(C, H, W)`` in [0, 1) per image at the input size (the CAM stage
        of ``protoseg cam``: multi-scale + flip, ReLU, normalised as the method does: max or min-max),
        restricted to ``tags`` ``(C,)`` when given. Weakly supervised (CAM) methods only."""
        if self.is_segmentor:
            raise ValueError(
                f"CAMs come from weakly supervised methods; model.method={self.method_name} is a segmentor: "
                "use model.predict / model.logits"
            )
        classes = int(self.network.num_classes)
        tag_tensor = torch.ones(classes) if tags is None else torch.as_tensor(tags, dtype=torch.float32)
        return self._run(
            inputs,
            lambda images: torch.stack(
                [
                    multiscale_cam(
                        self.method.cams, image, tag_tensor, scales, flip, self.method.cam_normalisation
                    )
                    for image in images
                ]
            ),
        )

    # -- files --------------------------------------------------------------------------------------
    def save_predictions(
        self, inputs: Sequence[str | Path] | str | Path, out_dir: str | Path, tta: bool = False
    ):
        """Write ``<stem>.png`` (palette PNG) and ``<stem>_overlay.jpg`` per image file, as ``protoseg
        predict``; returns the PNG paths."""
        network = self._segmentor("save_predictions")
        files = collect_images([inputs] if isinstance(inputs, (str, Path)) else inputs)
        cfg = self.config
        if tta:
            cfg = replace(cfg, eval=replace(cfg.eval, scales=list(TTA_SCALES), flip=True))
        meta = {"num_classes": network.num_classes, "palette": self.palette}
        with self._evaluating():
            return predict_files(self.method, cfg, meta, files, Path(out_dir), self.device)

    def export(
        self,
        path: str | Path,
        format: str = "onnx",
        *,
        size: Sequence[int] | None = None,
        batch: int = 2,
        dynamic: bool = True,
        opset: int = DEFAULT_OPSET,
    ) -> ExportResult:
        """Export the network (see :mod:`protoseg.export`): ``format`` onnx / torchscript / torch_export,
        an example of ``batch`` random images of ``size`` (default ``data.crop_size``)."""
        height, width = size or self.config.data.crop_size
        example = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
        meta = {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "palette": self.palette,
            "has_background": self.has_background,
        }
        was_training = self.training
        try:
            return export_model(
                self.network,
                path,
                example.to(self.device),
                format,
                dynamic=dynamic,
                opset=opset,
                metadata=run_metadata(self.config, meta),
            )
        finally:
            self.train(was_training)


def load(source: str | Path, *, checkpoint: str | Path | None = None, device: str = "cpu") -> Model:
    """A trained model from a run folder (its ``checkpoints/best.pt``, else ``last.pt``) or a checkpoint
    file, in eval mode on ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``). The config, the classes
    and the palette come from the checkpoint, as for ``protoseg predict``."""
    source = Path(source)
    if checkpoint is not None:
        path = Path(checkpoint)
    elif source.is_dir():
        path = find_checkpoint(source)
    elif source.is_file():
        path = source
    else:
        raise FileNotFoundError(f"protoseg.load: no run folder or checkpoint file {source}")
    method, cfg, meta = load_trained_method(path, resolve_device(device))
    model = Model(
        method,
        cfg,
        meta["class_names"],
        meta["palette"],
        has_background=bool(meta.get("has_background", False)),
        checkpoint=path,
    )
    return model.eval()


def create_model(
    method: str | None = None,
    num_classes: int | None = None,
    *,
    config: str | Path | Config | None = None,
    overrides: Sequence[str] = (),
    backbone: str | None = None,
    pretrained: bool | str = False,
    class_names: Sequence[str] | None = None,
    has_background: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> Model:
    """A new (untrained) model, like ``smp.create_model`` / ``timm.create_model``.

    Args:
        method: a ``model.method`` name (:func:`list_methods`); default: the config's.
        num_classes: classes of the dataset (background included where ``has_background``); default:
            ``len(class_names)`` or the config's ``data.num_classes``.
        config: a YAML config file, a run folder, or a :class:`Config` (default: protoseg's defaults).
        overrides: ``key=value`` strings as ``--set`` takes them, e.g. ``"model.protoseg.num_prototypes=5"``.
        backbone: ``tiny`` or a timm model name (``model.backbone.name``).
        pretrained: ``model.backbone.pretrained`` (False, True: timm hub weights, a file, ``offline``).
        class_names: one name per class (default ``class_0``, ...).
        has_background: class 0 is background (VOC-like; needed by the weakly supervised methods).
        seed: seeds the initialisation and the method's own random draws.

    The model is in training mode: ``model.method(batch)`` returns the losses of a training step and
    ``model.method.after_step(iteration)`` applies the updates after it (docs/api.md has a loop).
    """
    settings = [*overrides]
    if method is not None:
        method_class(method)  # ValueError naming the valid methods
        settings.insert(0, f"model.method={method}")
    if backbone is not None:
        settings.insert(0, f"model.backbone.name={backbone}")
    flag = str(pretrained).lower() if isinstance(pretrained, bool) else pretrained
    settings.insert(0, f"model.backbone.pretrained={flag}")
    if isinstance(config, Config):
        cfg = _apply_overrides(config, settings)
    else:
        path = Path(config) if config is not None else None
        if path is not None and path.is_dir():
            path = path / "config.yaml"
        cfg = load_config(path, settings)
    if num_classes is None:
        num_classes = len(class_names) if class_names else cfg.data.num_classes
    if num_classes is None or int(num_classes) < 1:
        raise ValueError(f"create_model needs num_classes >= 1 (or class_names), got {num_classes}")
    num_classes = int(num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"create_model: {len(class_names)} class_names for num_classes={num_classes}")
    names = list(class_names) if class_names else [f"class_{index}" for index in range(num_classes)]
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG state untouched
        torch.manual_seed(seed)
        built = build_method(cfg.model, DatasetInfo(num_classes, has_background), seed)
    model = Model(built, cfg, names, voc_palette(num_classes), has_background=has_background)
    return model.to(resolve_device(device))


def _apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """A copy of ``cfg`` with ``key=value`` overrides applied, validated as a config file is."""
    values = config_to_dict(cfg)
    for text in overrides:
        key, value = parse_override(text)
        *parents, last = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(values, "create_model")


__all__ = ["TTA_SCALES", "Model", "create_model", "list_methods", "load"]
