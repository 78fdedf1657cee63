"""The DALI backend's guard: DALI cannot skip a sample, so one undecodable image ends the pipeline.

Shards pass if the manifest says `python -m data_prep verify` passed (`"verified": true`). Otherwise
they are verified here on first use: each shard's sha256 is checked against the manifest and every
image is fully decoded with PIL. The result goes into a sidecar next to the manifest
(`dali_verified.json`: shard file -> sha256, size, mtime), so later runs only re-check shards whose
manifest entry or file changed.
"""

from __future__ import annotations

import hashlib
import json
import os

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
    if samples.manifest.get("verified") is True:
        return
    sidecar = samples.root / SIDECAR
    done = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    entries = samples.manifest["splits"][samples.split]["shards"]
    todo = [(k, e) for k, e in enumerate(entries) if done.get(e["file"]) != _stamp(samples.shards[k], e)]
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
