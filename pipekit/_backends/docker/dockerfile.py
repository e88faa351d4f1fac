"""A Dockerfile's ``FROM`` lines: the images a build starts from, and ``--image-map`` applied to them.

The map is applied by rewriting the Dockerfile that travels in the build context (the user's file
is never changed): that works the same with every builder pipekit drives (BuildKit through any
docker CLI, and the classic builder), where BuildKit's named contexts (``--build-context``) need
the buildx plugin, and a build arg needs the Dockerfile to be written for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["from_images", "map_from"]

#: ``FROM [--platform=...] IMAGE [AS NAME]``, the image on the instruction's own line
_FROM = re.compile(r"^(?P<head>\s*FROM\s+(?:--\S+\s+)*)(?P<image>[^\s\\]+)(?P<tail>.*)$", re.IGNORECASE)
_AS = re.compile(r"^\s+AS\s+(?P<name>\S+)", re.IGNORECASE)


def _froms(text: str) -> list[tuple[int, re.Match[str]]]:
    """The FROM lines that name an image (not ``scratch``, not an earlier stage, not ``$ARG``)."""
    found: list[tuple[int, re.Match[str]]] = []
    stages: set[str] = set()
    continued = False
    for number, line in enumerate(text.split("\n")):
        starts = not continued  # a line that continues an instruction is not an instruction
        continued = line.rstrip().endswith("\\") and not line.lstrip().startswith("#")
        match = _FROM.match(line) if starts else None
        if match is None:
            continue
        image = match["image"]
        alias = _AS.match(match["tail"])
        if image.lower() != "scratch" and image.lower() not in stages and "$" not in image:
            found.append((number, match))
        if alias:
            stages.add(alias["name"].lower())
    return found


def from_images(text: str) -> list[str]:
    """The images a Dockerfile's ``FROM`` lines start from, in order, each once."""
    return list(dict.fromkeys(match["image"] for _number, match in _froms(text)))


def map_from(text: str, image_map: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The Dockerfile with each ``FROM`` image that ``image_map`` names replaced, and what was
    replaced (image -> the image used instead)."""
    if not image_map:
        return text, {}
    lines = text.split("\n")
    used: dict[str, str] = {}
    for number, match in _froms(text):
        image = match["image"]
        if image in image_map:
            used[image] = image_map[image]
            lines[number] = f"{match['head']}{image_map[image]}{match['tail']}"
    return "\n".join(lines), used
