"""JSON files written whole or not at all: results, reports and study cells are read while runs write them."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, obj: dict, indent: int = 2) -> Path:
    """Write to `<name>.partial`, then rename over `path`: a reader, or a failed write, never leaves half a file
    (the partial is removed when the write fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
