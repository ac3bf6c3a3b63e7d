"""Prototype banks and memories (torch only): PrototypeBank, PixelQueue, RegionMemory, and OAA's
per-image AttentionStore."""

from .attention_store import AccumulatedMaps, AttentionStore
from .bank import PrototypeAssignment, PrototypeBank
from .pixel_queue import PixelQueue
from .region_memory import RegionMemory

__all__ = [
    "AccumulatedMaps",
    "AttentionStore",
    "PixelQueue",
    "PrototypeAssignment",
    "PrototypeBank",
    "RegionMemory",
]
