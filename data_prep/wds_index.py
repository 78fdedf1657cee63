"""DALI index files for WebDataset shards, in the text format DALI's `wds2idx` writes (v1.2).

    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> [<ext> <data_offset> <size> <member_name> ...]

one line per sample, members grouped by key (name up to the first dot of the basename), offsets
in bytes to the member's data. Written with `tarfile` instead of wds2idx's `tar` subprocess so it
needs no GNU tar and prints nothing; the result is byte-identical to wds2idx's.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

INDEX_VERSION = "v1.2"


def index_path(shard: Path) -> Path:
    """wds2idx's default: `train-000000.tar` -> `train-000000.idx`."""
    return shard.with_name(shard.name.split(".", 1)[0] + ".idx")


def index_text(shard: Path) -> str:
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = member.name.split(".", 1)
            component = f"{ext} {member.offset_data} {member.size} {member.name}"
            if key == last_key:
                samples[-1].append(component)
            else:
                samples.append([component])
                last_key = key
    return "".join([f"{INDEX_VERSION} {len(samples)}\n"] + [" ".join(s) + "\n" for s in samples])


def write_index(shard: Path, target: Path | None = None) -> Path:
    """Write the index of `shard` (to `target`, default `index_path(shard)`) atomically."""
    target = target or index_path(shard)
    tmp = target.with_name(target.name + ".partial")
    tmp.write_text(index_text(shard))
    os.replace(tmp, target)
    return target
