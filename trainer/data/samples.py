"""Random access to the samples of one split: where each image's bytes lie, and every label.

Built from data_prep's `manifest.json` and the DALI index file (`<shard>.idx`, wds2idx format) of
each shard, so no tar is scanned at start-up. Both backends read an image as one `pread` at the
offset the index gives; that lets them follow our own deterministic sample order (sampling.py)
instead of a streaming reader's, which is what makes per-epoch coverage across ranks exact.
Random reads inside tars assume a local disk or page cache; on a slow network file system copy the
shards to node-local storage first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.manifest import load_manifest

IMAGE_EXTS = ("jpg", "jpeg", "png")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives, for error messages."""

    shard: Path
    key: str


class SampleIndex:
    """The N samples of a split in manifest order. `labels`: int64[N], -1 where unlabeled."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise ValueError(f"{self.root / 'manifest.json'}: no split {split!r}; it has {sorted(splits)}")
        self.split = split
        self.labeled = bool(splits[split]["labeled"])
        self.class_names = [self.manifest["class_names"].get(c, c) for c in self.manifest["classes"]]
        self.shards = [self.root / s["file"] for s in splits[split]["shards"]]
        shard_ids, offsets, sizes, keys, cls_spans = [], [], [], [], []
        for shard_id, entry in enumerate(splits[split]["shards"]):
            rows = _read_index(self.root / entry["index"], self.shards[shard_id], entry["num_samples"])
            for key, (offset, size), cls_span in rows:
                shard_ids.append(shard_id)
                offsets.append(offset)
                sizes.append(size)
                keys.append(key)
                cls_spans.append(cls_span)
        self.shard_ids = np.asarray(shard_ids, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.keys = keys
        self._fds: dict[int, int] = {}
        self.labels = np.asarray([self._label(i, span) for i, span in enumerate(cls_spans)], dtype=np.int64)
        expected = splits[split]["num_samples"]
        if len(self) != expected:
            raise ValueError(f"{self.root / 'manifest.json'}: split {split!r} lists {expected} samples, "
                             f"its shard indexes hold {len(self)}")

    def __len__(self) -> int:
        return len(self.keys)

    def ref(self, i: int) -> SampleRef:
        return SampleRef(self.shards[self.shard_ids[i]], self.keys[i])

    def read(self, i: int) -> bytes:
        """The encoded image bytes of sample i (JPEG or PNG), exactly as stored in the shard."""
        return self._pread(int(self.shard_ids[i]), int(self.offsets[i]), int(self.sizes[i]))

    def _label(self, i: int, span: tuple[int, int] | None) -> int:
        if not self.labeled:
            return -1
        if span is None:
            ref = self.ref(i)
            raise ValueError(f"{ref.shard}: sample {ref.key!r} has no 'cls' in a labeled split")
        return int(self._pread(int(self.shard_ids[i]), *span).decode().strip())

    def _pread(self, shard_id: int, offset: int, size: int) -> bytes:
        # pread does not move a shared file offset, so the descriptors survive fork into workers
        fd = self._fds.get(shard_id)
        if fd is None:
            fd = self._fds[shard_id] = os.open(self.shards[shard_id], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise ValueError(f"{self.shards[shard_id]}: truncated (wanted {size} bytes at {offset})")
        return data

    def __getstate__(self) -> dict:
        # spawned workers reopen the shards lazily; descriptors do not pickle
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        for fd in self._fds.values():
            os.close(fd)


def _read_index(path: Path, shard: Path, num_samples: int) -> list[tuple[str, tuple[int, int], tuple[int, int] | None]]:
    """Parse a wds2idx v1.2 file: per sample, (key, (image offset, size), cls span or None)."""
    if not path.is_file():
        raise ValueError(f"{path}: missing DALI index of {shard.name} (data_prep writes it; or run `wds2idx {shard}`)")
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2 "):
        raise ValueError(f"{path}: not a wds2idx v1.2 index (first line {lines[:1]})")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split()
        members = {fields[j]: (int(fields[j + 1]), int(fields[j + 2]), fields[j + 3]) for j in range(0, len(fields), 4)}
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        if image is None:
            raise ValueError(f"{path}:{line_no}: sample has no image member (one of {IMAGE_EXTS}): {line!r}")
        key = os.path.basename(image[2]).split(".", 1)[0]
        cls = members.get("cls")
        rows.append((key, image[:2], cls[:2] if cls else None))
    if len(rows) != num_samples:
        raise ValueError(f"{path}: indexes {len(rows)} samples, the manifest says {shard.name} holds {num_samples}")
    return rows
