"""Figure plumbing shared by every picture: Agg-only figures, palette colouring, class legends.

Figures are built with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg``: nothing
touches pyplot's global state, so no display (and no ``MPLBACKEND``) is ever needed. Figures use
the constrained layout and are saved without ``bbox_inches="tight"``, so a PNG is exactly
``figsize * DPI`` pixels: the layout functions of each module give the size before drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..files import atomic_write

DPI = 100


def new_figure(width_inches: float, height_inches: float) -> Figure:
    """A constrained-layout figure of ``width x height`` inches at :data:`DPI`, on an Agg canvas."""
    figure = Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_pixels(width_inches: float, height_inches: float) -> tuple[int, int]:
    """``(width, height)`` in pixels of a PNG saved from :func:`new_figure` with these inches."""
    return round(width_inches * DPI), round(height_inches * DPI)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path`` (parent folders created; atomically, so a crash or a full
    disk leaves no partial picture) and return the path."""
    return atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=DPI))


def palette_colour(palette: Sequence[Sequence[int]], index: int) -> tuple[float, float, float]:
    """Class ``index``'s palette colour as a matplotlib RGB triple in ``[0, 1]``."""
    red, green, blue = palette[index]
    return red / 255.0, green / 255.0, blue / 255.0


def class_legend_handles(
    class_indices: Sequence[int], class_names: Sequence[str], palette: Sequence[Sequence[int]]
) -> list[Patch]:
    """Legend patches ``"name"`` in each listed class's palette colour (black edge for pale colours)."""
    return [
        Patch(facecolor=palette_colour(palette, index), edgecolor="black", label=class_names[index])
        for index in class_indices
    ]


LEGEND_COLUMNS = 8
LEGEND_ROW_INCHES = 0.25
LEGEND_MARGIN_INCHES = 0.25


def legend_inches(num_entries: int) -> float:
    """Height in inches reserved below the panels for a legend of ``num_entries`` in
    :data:`LEGEND_COLUMNS` columns."""
    rows = -(-max(num_entries, 1) // LEGEND_COLUMNS)
    return LEGEND_MARGIN_INCHES + rows * LEGEND_ROW_INCHES


def present_classes(*masks: np.ndarray, num_classes: int) -> list[int]:
    """Sorted class indices in ``[0, num_classes)`` that occur in any of ``masks`` (255 excluded)."""
    values: set[int] = set()
    for mask in masks:
        values.update(int(value) for value in np.unique(mask))
    return sorted(value for value in values if 0 <= value < num_classes)


def hide_ticks(axes) -> None:
    """An image panel: no ticks, no tick labels (the frame stays, to delimit the panel)."""
    axes.set_xticks([])
    axes.set_yticks([])


def file_stem(name: str) -> str:
    """``name`` made safe as a file-name stem (path separators and spaces replaced by ``_``)."""
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in name)
