"""The shared shard writer: encode in worker processes, write WebDataset tars, then the manifest.

Order of operations is what makes a run atomic and idempotent:
  1. the old manifest is removed first, so it never vouches for shards this run replaces;
  2. each shard is written under `<name>.partial` by webdataset's ShardWriter, indexed, hashed
     and renamed into place only once closed;
  3. the manifest is written last (atomically), then shards no longer listed are removed.
Bytes depend only on the input and the options: samples are shuffled by a seeded permutation,
workers return results in order (`imap`), and tar headers have fixed mtime/owner/mode.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from data_prep.encode import BadImage, Encoded, encode_image
from data_prep.manifest import manifest_path, write_manifest
from data_prep.shard_format import index_path, sha256_file, shard_stamp, write_index
from data_prep.source import Dataset, PrepError, Reader, Split

CREATED_BY = "sslscale data_prep 0.1.0"
CHUNK = 64  # images per worker task: large enough to amortise IPC, small enough to keep order cheap
PARTIAL = ".partial"


@dataclass(frozen=True)
class WriteOptions:
    max_samples: int = 10_000
    max_bytes: int = 256 * 2**20
    image_format: str = "png"  # for raw arrays and re-encoded files; JPEG/PNG files stay as they are
    quality: int = 95  # JPEG quality when image_format == "jpg"
    seed: int = 0
    workers: int = os.cpu_count() or 1
    skip_bad: bool = False


def write_dataset(dataset: Dataset, out_dir: Path, options: WriteOptions) -> dict[str, Any]:
    """Shard every split of `dataset` into `out_dir`; returns the manifest it wrote."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path(out_dir).unlink(missing_ok=True)
    sizes: set[tuple[int, int]] = set()
    exts: set[str] = set()
    splits = {}
    for split in dataset.splits:
        splits[split.name] = _write_split(split, out_dir, options, sizes, exts)
    manifest = {
        "dataset": dataset.name,
        "classes": dataset.classes,
        "class_names": dataset.class_names,
        "splits": splits,
        "image_size": list(sizes.pop()) if len(sizes) == 1 else None,
        "format": ";".join(sorted(exts)),
        "source": dataset.source,
        "options": {k: v for k, v in asdict(options).items() if k != "workers"},
        **dataset.extra,
        "created_by": CREATED_BY,
    }
    write_manifest(out_dir, manifest)
    _remove_unlisted(out_dir, manifest)
    return manifest


def _write_split(split: Split, out_dir: Path, options: WriteOptions,
                 sizes: set[tuple[int, int]], exts: set[str]) -> dict[str, Any]:
    if split.size == 0:
        raise PrepError(f"split {split.name!r}: no images found")
    shards: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    skipped: list[str] = []

    def publish(partial_name: str) -> None:
        partial = Path(partial_name)
        final = partial.with_name(partial.name.removesuffix(PARTIAL))
        index = write_index(partial, index_path(final))
        shards.append({"file": final.name, "index": index.name, "num_samples": counts[partial_name],
                       "sha256": sha256_file(partial), **shard_stamp(partial, index)})
        os.replace(partial, final)

    writer = wds.ShardWriter(str(out_dir / f"{split.name}-%06d.tar{PARTIAL}"), maxcount=options.max_samples,
                             maxsize=options.max_bytes, post=publish, verbose=0,
                             encoder=False, mtime=0, user="", group="", mode=0o444)
    samples = _encoded_samples(split, options, skipped)
    try:
        for key, label, encoded in samples:
            sample = {"__key__": key, encoded.ext: encoded.data}
            if label is not None:
                sample["cls"] = str(label).encode("ascii")
            writer.write(sample)
            counts[writer.fname] = counts.get(writer.fname, 0) + 1
            sizes.add(encoded.size)
            exts.add(encoded.ext)
        writer.close()
    except BaseException:
        writer.post = None  # a failed split must not rename its half-written shard into place
        writer.close()
        Path(writer.fname).unlink(missing_ok=True)
        raise
    finally:
        samples.close()
    entry: dict[str, Any] = {"num_samples": sum(s["num_samples"] for s in shards),
                             "labeled": split.labeled, "shards": shards}
    if skipped:
        entry["skipped"] = skipped
    return entry


def _encoded_samples(split: Split, options: WriteOptions,
                     skipped: list[str]) -> Iterator[tuple[str, int | None, Encoded]]:
    """(key, label, encoded image) in the seeded shuffled order; the key names the source index."""
    order = np.random.default_rng(options.seed).permutation(split.size)
    chunks = [order[i:i + CHUNK] for i in range(0, split.size, CHUNK)]
    width = max(6, len(str(split.size - 1)))
    worker_args = (split.read, options.image_format, options.quality)
    if options.workers <= 1:
        _init_worker(*worker_args)
        results = map(_encode_chunk, chunks)
        pool = None
    else:
        pool = multiprocessing.get_context().Pool(options.workers, _init_worker, worker_args)
        results = pool.imap(_encode_chunk, chunks)
    bar = tqdm(total=split.size, desc=split.name, unit="img", disable=None)  # after the fork: no threads yet
    try:
        for chunk in results:
            for index, label, encoded in chunk:
                if isinstance(encoded, BadImage):
                    if not options.skip_bad:
                        raise PrepError(str(encoded))
                    skipped.append(str(encoded.path))
                    tqdm.write(f"skipped {encoded}")
                    continue
                yield f"{split.name}_{index:0{width}d}", label, encoded
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


_worker: dict[str, Any] = {}


def _init_worker(read: Reader, image_format: str, quality: int) -> None:
    _worker.update(read=read, image_format=image_format, quality=quality)


def _encode_chunk(indices: np.ndarray) -> list[tuple[int, int | None, Encoded | BadImage]]:
    out = []
    for index in indices.tolist():
        image, label = _worker["read"](index)
        try:
            encoded: Encoded | BadImage = encode_image(image, _worker["image_format"], _worker["quality"])
        except BadImage as bad:
            encoded = bad
        out.append((index, label, encoded))
    return out


def _remove_unlisted(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Shards and indexes left by an earlier run with other options (or a killed one)."""
    listed = {name for entry in manifest["splits"].values() for s in entry["shards"]
              for name in (s["file"], s["index"])}
    for path in out_dir.iterdir():
        if path.name not in listed and (path.suffix in (".tar", ".idx") or path.name.endswith(PARTIAL)):
            path.unlink()
