"""The on-disk format of one shard, in one place: which members are images, the DALI index file,
and the cheap fingerprint the trainer checks at start. data_prep writes it; verify and the trainer
read it through the functions here.

The index is the text format DALI's `wds2idx` writes (v1.2):

    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> [<ext> <data_offset> <size> <member_name> ...]

one line per sample, members grouped by key (name up to the first dot of the basename), offsets
in bytes to the member's data. Written with `tarfile` instead of wds2idx's `tar` subprocess so it
needs no GNU tar and prints nothing; the result is byte-identical to wds2idx's.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

from PIL import Image

INDEX_VERSION = "v1.2"
IMAGE_EXTS = ("jpg", "jpeg", "png")  # data_prep writes jpg and png; other WebDataset writers also use jpeg
# what PIL raises on a bad image; DecompressionBombError (a huge declared size) is none of the others
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
FINGERPRINT_SPAN = 64 * 1024


class ShardError(ValueError):
    """A shard, index or label that is unreadable or not what the manifest lists; the message names
    the file (and line, key or value)."""


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


Span = tuple[int, int]


def parse_index(path: Path, text: str) -> list[tuple[str, Span, Span | None]]:
    """Per sample of a v1.2 index: (key, (image offset, size), (cls offset, size) or None).

    Raises ShardError naming the file, the line and the token that is wrong."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(INDEX_VERSION + " "):
        raise ShardError(f"{path}: not a wds2idx {INDEX_VERSION} index (first line {lines[:1]})")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ShardError(f"{path}:{line_no}: expected groups of 4 fields (ext offset size name), "
                             f"got {len(fields)}: {line!r}")
        members = {}
        for j in range(0, len(fields), 4):
            ext, offset, size, name = fields[j : j + 4]
            if not (offset.isdigit() and size.isdigit()):
                raise ShardError(f"{path}:{line_no}: offset and size of {ext!r} must be integers, "
                                 f"got {offset!r} {size!r}")
            members[ext] = (int(offset), int(size), name)
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        if image is None:
            raise ShardError(f"{path}:{line_no}: sample has no image member (one of {IMAGE_EXTS}): {line!r}")
        key = os.path.basename(image[2]).split(".", 1)[0]
        cls = members.get("cls")
        rows.append((key, image[:2], cls[:2] if cls else None))
    return rows


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """sha256 of the size and the first and last 64 KiB: two reads, whatever the shard's size.

    Tells a tar from another preparation (other split, seed, images) from the one the manifest lists;
    a change that keeps the size and touches only the middle is left to `data_prep verify`'s sha256."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_SPAN))
        f.seek(max(0, size - FINGERPRINT_SPAN))
        digest.update(f.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def shard_stamp(shard: Path, index: Path) -> dict[str, int | str]:
    """The manifest fields the trainer checks at start: tar size and fingerprint, index sha256."""
    return {"size": shard.stat().st_size, "fingerprint": fingerprint(shard),
            "index_sha256": sha256_file(index)}


STAMP_KEYS = ("size", "fingerprint", "index_sha256")


def check_stamp(root: Path, entry: dict, manifest_file: Path) -> None:
    """Raise ShardError naming the file when a shard or its index is not the one `manifest_file` lists."""
    missing = [k for k in STAMP_KEYS if k not in entry]
    if missing:
        raise ShardError(f"{manifest_file}: shard {entry['file']} has no {'/'.join(missing)} (written by an "
                         f"older data_prep): run `python -m data_prep verify --out {root}`, which adds them "
                         f"after checking every shard's sha256, or re-run data_prep")
    shard, index = root / entry["file"], root / entry["index"]
    for path in (shard, index):
        if not path.is_file():
            raise ShardError(f"{path}: missing (listed in {manifest_file})")
    size = shard.stat().st_size
    if size != entry["size"]:
        raise ShardError(f"{shard}: {size} bytes, {manifest_file} says {entry['size']} (truncated, or "
                         f"not the shard data_prep wrote)")
    if fingerprint(shard) != entry["fingerprint"]:
        raise ShardError(f"{shard}: not the shard {manifest_file} lists (its fingerprint differs: another "
                         f"preparation, or changed since); re-run data_prep, or `python -m data_prep "
                         f"verify` to see more")
    if sha256_file(index) != entry["index_sha256"]:
        raise ShardError(f"{index}: not the index {manifest_file} lists (its sha256 differs); "
                         f"re-run data_prep")
