"""python -m data_prep <stl10|tiny-imagenet|cifar10|fashion-mnist|mnist|imagefolder|digits> --src DIR
    --out DIR [...]
python -m data_prep verify --out DIR

Shards land in `--out/<dataset>/` (`<split>-NNNNNN.tar`, `.idx`, `manifest.json`); see docs/data_prep.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from data_prep.cifar10 import read_cifar10
from data_prep.digits import read_digits
from data_prep.download import DOWNLOADABLE, download
from data_prep.imagefolder import read_imagefolder
from data_prep.manifest import ManifestError, manifest_path
from data_prep.mnist import IDX_DATASETS, read_idx_dataset
from data_prep.source import Dataset, PrepError
from data_prep.stl10 import read_stl10
from data_prep.tiny_imagenet import read_tiny_imagenet
from data_prep.verify import verify_dataset
from data_prep.writer import WriteOptions, write_dataset

SOURCES = {"stl10": read_stl10, "tiny-imagenet": read_tiny_imagenet, "cifar10": read_cifar10,
           **{name: functools.partial(read_idx_dataset, d) for name, d in IDX_DATASETS.items()}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="shards go to OUT/<dataset>/")
    common.add_argument("--splits", type=lambda s: s.split(","), help="comma-separated subset (default: all)")
    common.add_argument("--max-samples", type=int, default=10_000, help="samples per shard at most")
    common.add_argument("--max-bytes", type=int, default=256 * 2**20,
                        help="a new shard starts once a shard reaches this many payload bytes (default 256 MiB)")
    common.add_argument("--format", choices=["png", "jpg"], default="png",
                        help="encoding of raw arrays and non-JPEG/PNG files; JPEG/PNG files are kept as-is")
    common.add_argument("--quality", type=int, default=95, help="JPEG quality with --format jpg")
    common.add_argument("--seed", type=int, default=0, help="shuffle order (and the digits train/test split)")
    common.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    common.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable image files, listing them, instead of failing")
    for name in [*SOURCES, "imagefolder"]:
        sub = commands.add_parser(name, parents=[common], help=f"shard {name}")
        default_src = IDX_DATASETS[name].default_src if name in IDX_DATASETS else None
        sub.add_argument("--src", type=Path, default=default_src, required=default_src is None,
                         help="the extracted folder or its parent"
                         + (" (default: %(default)s)" if default_src else ""))
        if name in DOWNLOADABLE:
            sub.add_argument("--download", action="store_true",
                             help="fetch the official files into --src first (MD5 verified; files "
                                  "already there are kept)")
        if name == "imagefolder":
            sub.add_argument("--name", help="dataset folder name under --out (default: the --src folder name)")
    digits = commands.add_parser("digits", parents=[common], help="scikit-learn digits (bundled, no download)")
    digits.add_argument("--size", type=int, default=32, help="output side in pixels (bicubic upsampling of 8x8)")
    verify = commands.add_parser("verify", help="re-read shards, check them against manifest.json")
    verify.add_argument("--out", type=Path, required=True, help="a dataset folder, or a folder of them")
    verify.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser


class OptionError(PrepError):
    """An option value that cannot work, found before anything is read or written; exit 2, as argparse's."""


def check_options(args: argparse.Namespace) -> None:
    positive = {"--max-samples": args.max_samples, "--max-bytes": args.max_bytes,
                **({"--size": args.size} if args.command == "digits" else {})}
    for flag, value in positive.items():
        if value < 1:
            raise OptionError(f"{flag} {value}: must be a positive integer")
    if not 1 <= args.quality <= 100:
        raise OptionError(f"--quality {args.quality}: must be in 1..100")
    name = getattr(args, "name", None)
    if name is not None and (name in ("", ".", "..") or any(c in name for c in "/\\\0")):
        raise OptionError(f"--name {name!r}: must be a plain folder name (no '/', not '.' or '..')")


def check_apart(out_dir: Path, src: Path) -> None:
    """Refuse a dataset folder that holds the source or lies inside it: a rerun would write over the user's
    files."""
    out, source = out_dir.resolve(), src.resolve()
    if out == source or out in source.parents:
        raise OptionError(f"--out: the dataset folder {out} contains --src {source}; "
                          "choose an --out outside it")
    if source in out.parents:
        raise OptionError(f"--out: the dataset folder {out} is inside --src {source}; "
                          "choose an --out outside it")


def read_source(args: argparse.Namespace) -> Dataset:
    if args.command == "digits":
        return read_digits(size=args.size, seed=args.seed, splits=args.splits)
    if args.command == "imagefolder":
        return read_imagefolder(args.src, splits=args.splits, name=args.name)
    src = download(args.command, args.src) if args.command in DOWNLOADABLE and args.download else args.src
    return SOURCES[args.command](src, splits=args.splits)


def prepare(args: argparse.Namespace) -> None:
    check_options(args)
    dataset = read_source(args)
    out_dir = args.out / dataset.name
    if args.command != "digits":
        check_apart(out_dir, args.src)
    options = WriteOptions(max_samples=args.max_samples, max_bytes=args.max_bytes, image_format=args.format,
                           quality=args.quality, seed=args.seed, workers=args.workers, skip_bad=args.skip_bad)
    manifest = write_dataset(dataset, out_dir, options)
    for split, entry in manifest["splits"].items():
        skipped = f", {len(entry['skipped'])} bad files skipped" if "skipped" in entry else ""
        print(f"{split}: {entry['num_samples']} samples in {len(entry['shards'])} shard(s){skipped}")
    print(f"wrote {manifest_path(out_dir)}; check with: python -m data_prep verify --out {out_dir}")


def verify(args: argparse.Namespace) -> int:
    if manifest_path(args.out).is_file():
        folders = [args.out]
    else:
        folders = sorted(p.parent for p in args.out.glob("*/manifest.json"))
    if not folders:
        raise ManifestError(f"{manifest_path(args.out)}: missing, and no <dataset>/manifest.json under {args.out}")
    failed = 0
    for folder in folders:
        report = verify_dataset(folder, workers=args.workers)
        for problem in report.problems:
            print(f"{folder}: {problem}", file=sys.stderr)
        status = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{folder}: {report.num_samples} samples in {report.num_shards} shard(s): {status}")
        failed += not report.ok
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            return verify(args)
        prepare(args)
        return 0
    except OptionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (PrepError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
