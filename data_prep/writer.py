"""The shared shard writer: encode in worker processes, write WebDataset tars, then the manifest.

Order of operations is what makes a run atomic and idempotent, and what keeps a good dataset
already in `out_dir` whole until its replacement is complete:
  1. every shard of every split is written as `<name>.tar.partial` by webdataset's ShardWriter,
     indexed (`<name>.idx.partial`) and hashed; a failure removes them and touches nothing else;
  2. only then is the old manifest removed, the staged files renamed into place, and the new
     manifest written (atomically);
  3. last, the files the old manifest listed and the new one does not are removed, with the
     partials a killed run may have left: nothing else in `out_dir` is ever deleted.
Bytes depend only on the input and the options: samples are shuffled by a seeded permutation,
workers return results in order (`imap`), and tar headers have fixed mtime/owner/mode.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from data_prep.encode import BadImage, Encoded, encode_image
from data_prep.manifest import ManifestError, load_manifest, manifest_path, write_manifest
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
    sizes: set[tuple[int, int]] = set()
    exts: set[str] = set()
    splits = {}
    staged: list[tuple[Path, Path]] = []  # (partial, final) of every file written
    try:
        for split in dataset.splits:
            splits[split.name] = _write_split(split, out_dir, options, sizes, exts, staged)
    except BaseException:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
        raise
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
    previous = _listed(out_dir)
    manifest_path(out_dir).unlink(missing_ok=True)  # from here on the old manifest would vouch for new files
    for partial, final in staged:
        os.replace(partial, final)
    write_manifest(out_dir, manifest)
    for name in previous - _listed(out_dir):
        (out_dir / name).unlink(missing_ok=True)
    leftover = re.compile(rf"({'|'.join(map(re.escape, splits))})-\d{{6}}\.(tar|idx)({re.escape(PARTIAL)})+")
    for path in out_dir.iterdir():
        if leftover.fullmatch(path.name):  # staged by a killed run of these splits
            path.unlink()
    return manifest


def _write_split(split: Split, out_dir: Path, options: WriteOptions, sizes: set[tuple[int, int]],
                 exts: set[str], staged: list[tuple[Path, Path]]) -> dict[str, Any]:
    if split.size == 0:
        raise PrepError(f"split {split.name!r}: no images found")
    shards: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    skipped: list[str] = []

    def publish(partial_name: str) -> None:
        partial = Path(partial_name)
        final = partial.with_name(partial.name.removesuffix(PARTIAL))
        index = index_path(final).with_name(index_path(final).name + PARTIAL)
        staged.extend([(partial, final), (index, index_path(final))])
        write_index(partial, index)
        shards.append({"file": final.name, "index": index_path(final).name,
                       "num_samples": counts[partial_name], "sha256": sha256_file(partial),
                       **shard_stamp(partial, index)})

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
        writer.post = None  # a failed split must not index or stage its half-written shard
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


def _listed(out_dir: Path) -> set[str]:
    """The files a readable manifest in `out_dir` lists (plain names only: it never points outside)."""
    try:
        manifest = load_manifest(out_dir)
    except ManifestError:
        return set()
    names = {s.get(key) for entry in manifest["splits"].values() for s in entry["shards"]
             for key in ("file", "index")}
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")}
