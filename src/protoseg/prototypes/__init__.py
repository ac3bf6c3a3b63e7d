"""Prototype banks and memories (torch only): PrototypeBank, PixelQueue, RegionMemory."""
from .bank import PrototypeAssignment, PrototypeBank
