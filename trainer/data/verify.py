"""The DALI backend's guard: DALI cannot skip a sample, so one undecodable image ends the pipeline.

`"verified": true` (written by `python -m data_prep verify`) vouches for the shards as they were when
verify rewrote manifest.json, so it covers only shards last modified before the manifest. Any other
shard is verified here: its sha256 is checked against the manifest and every image fully decoded
with PIL. The result goes into a sidecar next to the manifest (`dali_verified.json`: shard file ->
sha256, size, mtime), so later runs only re-check shards whose manifest entry or file changed.

Cost on a verified dataset: one stat per shard per start; a shard changed after verify is read and
decoded once. Not caught: a change that restores the shard's old mtime (touch -r, some copies);
only hashing every shard at every start would catch that.
"""

from __future__ import annotations

import hashlib
import json
import os

from data_prep.manifest import manifest_path
from trainer.data.samples import SampleIndex
from trainer.data.torch_backend import DECODE_ERRORS, decode_rgb

SIDECAR = "dali_verified.json"


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path, entry: dict) -> dict:
    stat = path.stat()
    return {"sha256": entry["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def ensure_verified(samples: SampleIndex) -> None:
    """Raise ValueError naming the shard (and key) of the first bad image; record shards that pass."""
    sidecar = samples.root / SIDECAR
    done = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    entries = samples.manifest["splits"][samples.split]["shards"]
    # a shard modified in the same clock tick as the manifest is re-checked (>=, not >)
    verified_ns = manifest_path(samples.root).stat().st_mtime_ns if samples.manifest.get("verified") is True else -1
    stamps = [_stamp(samples.shards[k], e) for k, e in enumerate(entries)]
    todo = [(k, e) for k, e in enumerate(entries)
            if stamps[k]["mtime_ns"] >= verified_ns and done.get(e["file"]) != stamps[k]]
    if not todo:
        return
    for shard_id, entry in todo:
        path = samples.shards[shard_id]
        if _sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 differs from the manifest's; the shard changed after data_prep wrote it")
        for i in (samples.shard_ids == shard_id).nonzero()[0]:
            try:
                decode_rgb(samples.read(i))
            except DECODE_ERRORS as err:
                ref = samples.ref(i)
                raise ValueError(f"{ref.shard}: sample {ref.key!r} cannot be decoded ({err}); the DALI backend "
                                 f"cannot skip it: rebuild the shards or use data.backend=torch") from err
        done[entry["file"]] = _stamp(path, entry)
    # each rank may verify at once; each writes a complete file under its own name, then renames
    tmp = sidecar.with_name(f"{SIDECAR}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(done, indent=2) + "\n")
    os.replace(tmp, sidecar)
