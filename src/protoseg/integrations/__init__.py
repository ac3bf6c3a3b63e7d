"""protoseg's heads inside the toolkits people already use (optional packages, imported on use).

- :mod:`protoseg.integrations.smp`: a ProtoSeg head (or any protoseg head) on a
  segmentation_models_pytorch encoder / decoder (``pip install 'protoseg[smp]'``).

mmsegmentation is not integrated: mmseg 1.x needs mmcv's compiled ops, and mmcv has no wheel on PyPI
for the torch protoseg supports (docs/api.md has the errors).
"""
