"""The code blocks of the docs, so that tests can run the examples users copy."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(document: str | Path, heading: str) -> list[str]:
    """The ```python blocks of ``document`` (relative to the repository) in the section that starts
    at the line ``heading`` (e.g. ``"## Quickstart"``) and ends at the next heading of the same or a
    higher level (``#`` lines inside code blocks are comments, not headings)."""
    level = len(heading.split()[0])
    blocks: list[str] = []
    inside, fence, current = False, None, []
    for line in (ROOT / document).read_text().splitlines():
        if fence is None and line.startswith("#"):
            depth = len(line) - len(line.lstrip("#"))
            if line == heading:
                inside = True
                continue
            if inside and depth <= level:
                break
        if line.startswith("```"):
            if fence is None:
                fence, current = line[3:].strip(), []
            else:
                if inside and fence == "python":
                    blocks.append("\n".join(current) + "\n")
                fence = None
            continue
        if fence is not None:
            current.append(line)
    return blocks
