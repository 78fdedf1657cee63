"""Re-read every shard of a dataset folder and check it against its manifest: the one verifier.

Checks per shard: sha256, the DALI index matches the tar, sample count, each sample has exactly
one image (jpg/png) that PIL fully decodes (a decompression bomb is a bad sample like any other),
`cls` present iff the split is labeled and in range, keys unique within the split. Uses plain
`tarfile` (not the writer's library). On success the manifest gains `"verified": true`, which the
DALI loader requires, and the `size`/`fingerprint`/`index_sha256` the trainer checks at start
where a manifest from an older data_prep lacks them; on failure `verified` is removed.
"""

from __future__ import annotations

import copy
import io
import multiprocessing
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data_prep.manifest import MANIFEST_NAME, load_manifest, write_manifest
from data_prep.shard_format import DECODE_ERRORS, IMAGE_EXTS, index_text, sha256_file, shard_stamp


@dataclass(frozen=True)
class Problem:
    shard: str
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.shard}" + (f" [{self.key}]" if self.key else "") + f": {self.message}"


@dataclass
class VerifyReport:
    out_dir: Path
    num_samples: int = 0
    num_shards: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(out_dir: str | Path, workers: int = os.cpu_count() or 1) -> VerifyReport:
    """Check every shard listed in `out_dir/manifest.json`; mark the manifest verified if all pass."""
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    before = copy.deepcopy(manifest)
    report = VerifyReport(out_dir)
    jobs = [(out_dir, shard, entry["labeled"], len(manifest["classes"]))
            for entry in manifest["splits"].values() for shard in entry["shards"]]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
            results = pool.starmap(_check_shard, jobs)
    else:
        results = [_check_shard(*job) for job in jobs]
    shard_results = iter(results)
    for split, entry in manifest["splits"].items():
        seen: set[str] = set()
        for shard in entry["shards"]:
            keys, problems, stamp = next(shard_results)
            report.problems += problems
            shard.update(stamp)  # from bytes whose sha256 matched: right for old and new manifests alike
            report.problems += [Problem(shard["file"], k, f"key repeated in split {split!r}")
                                for k in keys if k in seen]
            seen.update(keys)
            report.num_samples += len(keys)
            report.num_shards += 1
        if len(seen) != entry["num_samples"]:
            report.problems.append(Problem(f"split {split}", None,
                                           f"{len(seen)} samples, manifest says {entry['num_samples']}"))
    if report.ok:
        manifest["verified"] = True
    else:
        manifest.pop("verified", None)
    if manifest != before:  # a verified, read-only dataset can be re-verified
        try:
            write_manifest(out_dir, manifest)
        except OSError as err:
            report.problems.append(Problem(MANIFEST_NAME, None, f"the result could not be recorded ({err})"))
    return report


def _check_shard(out_dir: Path, shard: dict, labeled: bool,
                 num_classes: int) -> tuple[list[str], list[Problem], dict]:
    """Returns the shard's sample keys, its problems, and its stamp (shard_format.shard_stamp) when
    the tar's sha256 and the index match, else {}."""
    name = shard["file"]
    path = out_dir / name
    if not path.is_file():
        return [], [Problem(name, None, "missing file")], {}
    problems = []
    if sha256_file(path) != shard["sha256"]:
        problems.append(Problem(name, None, "sha256 differs from the manifest (file changed or corrupt)"))
    try:
        samples = _read_samples(path)
    except (tarfile.TarError, OSError, ValueError) as err:
        return [], problems + [Problem(name, None, f"not a readable tar ({err})")], {}
    index = out_dir / shard["index"]
    if not index.is_file() or index.read_text() != index_text(path):
        problems.append(Problem(name, None, f"DALI index {shard['index']} missing or out of date"))
    stamp = {} if problems else shard_stamp(path, index)
    if len(samples) != shard["num_samples"]:
        problems.append(Problem(name, None, f"{len(samples)} samples, manifest says {shard['num_samples']}"))
    for key, fields in samples.items():
        problems += [Problem(name, key, m) for m in _sample_problems(fields, labeled, num_classes)]
    return list(samples), problems, stamp


def _read_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _sample_problems(fields: dict[str, bytes], labeled: bool, num_classes: int) -> list[str]:
    problems = []
    images = [ext for ext in fields if ext in IMAGE_EXTS]
    if len(images) != 1:
        problems.append(f"expected one image field of {IMAGE_EXTS}, found {sorted(fields)}")
    for ext in images:
        try:
            with Image.open(io.BytesIO(fields[ext])) as image:
                image.load()
        except DECODE_ERRORS as err:
            problems.append(f"{ext} does not decode ({err})")
    if labeled != ("cls" in fields):
        problems.append("missing cls in a labeled split" if labeled else "cls in an unlabeled split")
    elif labeled:
        text = fields["cls"].decode("ascii", "replace")
        if not text.isdigit() or int(text) >= num_classes:
            problems.append(f"cls {text!r} is not a label in 0..{num_classes - 1}")
    return problems
