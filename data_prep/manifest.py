"""The per-dataset `manifest.json`: what the shards hold and how to check them.

    {"dataset", "classes": [id, ...] (label k is classes[k]), "class_names": {id: name},
     "splits": {split: {"num_samples", "labeled", "shards": [{"file", "index", "num_samples",
                "sha256", "size", "fingerprint", "index_sha256"}], "skipped"?: [path, ...]}},
     "image_size": [H, W] or null when sizes vary, "format": "png" | "jpg" | "jpg;png",
     "source", "options", "created_by", "folds"? (STL-10), "verified"? (set by `verify` only)}

It is written last and atomically, so its presence means every shard it lists is complete.
`sha256` is checked by `verify`; `size`, `fingerprint` and `index_sha256` (shard_format.shard_stamp)
by the trainer at every start. Manifests from before those three existed still load here; the
trainer refuses them until `python -m data_prep verify` has added them (after checking every sha256).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("dataset", "classes", "class_names", "splits", "image_size", "format", "source")
SPLIT_KEYS = ("num_samples", "labeled", "shards")
SHARD_KEYS = ("file", "index", "num_samples", "sha256")


class ManifestError(ValueError):
    """A missing, unreadable or incomplete manifest; the message names the file."""


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write to a temporary name, then rename: readers see the old manifest or the new one."""
    path = manifest_path(out_dir)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_manifest(out_dir: str | Path, require_verified: bool = False) -> dict[str, Any]:
    """Read and check the manifest of one dataset folder. With `require_verified`, refuse shards
    that `python -m data_prep verify` has not passed (the DALI loader's guard)."""
    path = manifest_path(out_dir)
    if not path.is_file():
        raise ManifestError(f"{path}: missing (run `python -m data_prep <dataset> --out ...` first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not readable JSON ({err})") from err
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing key(s) {missing}")
    for split, entry in manifest["splits"].items():
        missing = [k for k in SPLIT_KEYS if k not in entry]
        missing += [f"shards[{i}].{k}" for i, s in enumerate(entry.get("shards", [])) for k in SHARD_KEYS
                    if k not in s]
        if missing:
            raise ManifestError(f"{path}: split {split!r} is missing {missing}")
    if require_verified and manifest.get("verified") is not True:
        raise ManifestError(f"{path}: shards not verified (run `python -m data_prep verify --out {out_dir}`)")
    return manifest
