"""Random access to the samples of one split: where each image's bytes lie, and every label.

Built from data_prep's `manifest.json` and the DALI index file (`<shard>.idx`, wds2idx format) of
each shard, so no tar is scanned at start-up. Each shard's size and fingerprint and its index's
sha256 are checked against the manifest first (data_prep.shard_format.check_stamp: two 64 KiB reads
per shard), so a tar or index from another preparation is refused, named. Both backends read an
image as one `pread` at the offset the index gives; that lets them follow our own deterministic
sample order (sampling.py) instead of a streaming reader's, which is what makes per-epoch coverage
across ranks exact.
Random reads inside tars assume a local disk or page cache; on a slow network file system copy the
shards to node-local storage first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.manifest import load_manifest, manifest_path
from data_prep.shard_format import ShardError, check_stamp, parse_index


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives, for error messages."""

    shard: Path
    key: str


class SampleIndex:
    """The N samples of a split in manifest order. `labels`: int64[N], -1 where unlabeled."""

    def __init__(self, root: str | Path, split: str):
        self._fds: dict[int, int] = {}  # first, so __del__ has it whatever __init__ raises
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        manifest_file = manifest_path(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise ShardError(f"{manifest_file}: no split {split!r}; it has {sorted(splits)}")
        self.split = split
        self.labeled = bool(splits[split]["labeled"])
        self.class_names = [self.manifest["class_names"].get(c, c) for c in self.manifest["classes"]]
        self.shards = [self.root / s["file"] for s in splits[split]["shards"]]
        shard_ids, offsets, sizes, keys, cls_spans = [], [], [], [], []
        for shard_id, entry in enumerate(splits[split]["shards"]):
            check_stamp(self.root, entry, manifest_file)
            index = self.root / entry["index"]
            rows = parse_index(index, index.read_text())
            if len(rows) != entry["num_samples"]:
                raise ShardError(f"{index}: indexes {len(rows)} samples, {manifest_file} says "
                                 f"{entry['file']} holds {entry['num_samples']}")
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
        self.labels = np.asarray([self._label(i, span) for i, span in enumerate(cls_spans)], dtype=np.int64)
        expected = splits[split]["num_samples"]
        if len(self) != expected:
            raise ShardError(f"{manifest_file}: split {split!r} lists {expected} samples, "
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
        ref = self.ref(i)
        if span is None:
            raise ShardError(f"{ref.shard}: sample {ref.key!r} has no 'cls' in a labeled split")
        text = self._pread(int(self.shard_ids[i]), *span).decode("ascii", "replace").strip()
        num_classes = len(self.class_names)
        if not (text.isdigit() and int(text) < num_classes):
            raise ShardError(f"{ref.shard}: sample {ref.key!r} has label {text!r}, not a class of "
                             f"{manifest_path(self.root)} (0..{num_classes - 1})")
        return int(text)

    def _pread(self, shard_id: int, offset: int, size: int) -> bytes:
        # pread does not move a shared file offset, so the descriptors survive fork into workers
        fd = self._fds.get(shard_id)
        if fd is None:
            fd = self._fds[shard_id] = os.open(self.shards[shard_id], os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise ShardError(f"{self.shards[shard_id]}: truncated (wanted {size} bytes at {offset})")
        return data

    def __getstate__(self) -> dict:
        # spawned workers reopen the shards lazily; descriptors do not pickle
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
