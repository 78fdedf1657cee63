"""Shard-writing throughput of data_prep on a synthetic STL-10-shaped source.

Writes a synthetic `stl10_binary/unlabeled_X.bin` (smooth random 96x96 images, so PNG sizes are
close to natural images rather than incompressible noise), shards it with 1 and 2 worker
processes in PNG and JPEG, and reports images/s end to end (read, encode, tar, index, sha256),
plus the CPU seconds spent (this process and its workers), which tell the cost per image even
when other jobs share the cores and the wall-clock rate drops.

    python benchmarks/prep_throughput.py [--images 5000] [--device cpu-2core]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.stl10 import SIDE, read_stl10
from data_prep.writer import WriteOptions, write_dataset


def synthetic_stl10(root: Path, num_images: int, seed: int = 0) -> None:
    """Column-major 3x96x96 images, the official layout, upsampled from 12x12 noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    with open(root / "unlabeled_X.bin", "wb") as f:
        for _ in range(num_images):
            small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
            hwc = np.asarray(small.resize((SIDE, SIDE), Image.Resampling.BICUBIC))
            f.write(np.ascontiguousarray(hwc.transpose(2, 1, 0)).tobytes())


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--device", default="cpu-2core", help="names the results file")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # other jobs on the cores lower img/s, not cpu ms/img
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stl10_binary"
        synthetic_stl10(src, args.images)
        dataset = read_stl10(src, splits=["unlabeled"])
        for image_format in ("png", "jpg"):
            for workers in (1, 2):
                out = Path(tmp) / f"out-{image_format}-{workers}"
                cpu_before, start = cpu_seconds(), time.perf_counter()
                manifest = write_dataset(dataset, out, WriteOptions(image_format=image_format, workers=workers))
                seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_before
                shard_bytes = sum((out / s["file"]).stat().st_size for s in manifest["splits"]["unlabeled"]["shards"])
                rows.append({"impl": f"data_prep-{image_format}", "workers": workers, "num_images": args.images,
                             "image_size": [SIDE, SIDE], "seconds": round(seconds, 3),
                             "img_per_s": round(args.images / seconds, 1), "cpu_seconds": round(cpu, 3),
                             "cpu_ms_per_image": round(1000 * cpu / args.images, 3),
                             "bytes_per_image": round(shard_bytes / args.images)})
    print(f"{'impl':<14} {'workers':>7} {'images':>7} {'seconds':>8} {'img/s':>8} {'cpu ms/img':>10} {'bytes/img':>10}")
    for r in rows:
        print(f"{r['impl']:<14} {r['workers']:>7} {r['num_images']:>7} {r['seconds']:>8.2f} {r['img_per_s']:>8.1f}"
              f" {r['cpu_ms_per_image']:>10.3f} {r['bytes_per_image']:>10}")
    png2 = next(r for r in rows if r["impl"] == "data_prep-png" and r["workers"] == 2)
    print(f"STL-10 unlabeled (100k) at the png/2-worker rate: {100_000 / png2['img_per_s'] / 60:.1f} min")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"prep_throughput_{args.device}_{datetime.date.today().isoformat()}.json"
    record = {"bench": "prep_throughput", "device": args.device, "load_avg_1min": round(load_before, 2),
              "rows": rows}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
