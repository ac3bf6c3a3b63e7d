"""protoseg.models.heads."""
from .protoseg import ProtoSegHead
