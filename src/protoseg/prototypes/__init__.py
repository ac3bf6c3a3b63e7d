"""Prototype banks and memories (torch only): PrototypeBank, PixelQueue, RegionMemory."""

from .bank import PrototypeAssignment, PrototypeBank
from .pixel_queue import PixelQueue
from .region_memory import RegionMemory

__all__ = ["PixelQueue", "PrototypeAssignment", "PrototypeBank", "RegionMemory"]
