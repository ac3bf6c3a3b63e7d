"""protoseg.models.heads."""

from .protoseg import ProtoSegHead
from .contrast import ContrastHead, ProjectionHead
