"""The shared writer: determinism, shuffling, shard limits, atomicity, DALI index files."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prep_helpers import load_json, read_shards
from wds2idx import IndexCreator

import data_prep.writer
from data_prep.digits import read_digits
from data_prep.writer import WriteOptions, write_dataset


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_rerun_and_worker_count_give_identical_bytes(tmp_path: Path):
    dataset = read_digits(size=8)
    options = WriteOptions(max_samples=300, workers=1)
    write_dataset(dataset, tmp_path / "a", options)
    first = folder_bytes(tmp_path / "a")
    write_dataset(dataset, tmp_path / "a", options)
    assert folder_bytes(tmp_path / "a") == first
    write_dataset(dataset, tmp_path / "b", WriteOptions(max_samples=300, workers=2))
    assert folder_bytes(tmp_path / "b") == first
    assert sorted(first) == ["manifest.json"] + [f"{split}-00000{i}.{ext}" for split, n in [("test", 2), ("train", 5)]
                                                 for i in range(n) for ext in ("idx", "tar")]


def test_shuffled_across_classes_and_sized_shards(tmp_path: Path):
    manifest = write_dataset(read_digits(size=8), tmp_path, WriteOptions(max_samples=100, workers=1))
    samples = read_shards(tmp_path, "train")
    for shard in manifest["splits"]["train"]["shards"]:
        labels = [s["cls"] for s in samples.values() if s["shard"] == shard["file"]]
        assert len(labels) == shard["num_samples"] <= 100
        assert len(set(labels)) == 10  # every class in every shard of 100 (or the last, of 37)
    order = [int(k.rsplit("_", 1)[1]) for k in samples]
    assert sorted(order) == list(range(1437)) and order != sorted(order)

    limit = 10_000  # payload bytes: a shard closes once it holds this much
    by_bytes = write_dataset(read_digits(size=8, splits=["test"]), tmp_path, WriteOptions(max_bytes=limit, workers=1))
    shards = [s["file"] for s in by_bytes["splits"]["test"]["shards"]]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == shards  # the earlier run's shards are gone
    payload = {name: 0 for name in shards}
    for sample in read_shards(tmp_path, "test").values():
        payload[sample["shard"]] += len(sample["bytes"]) + len(str(sample["cls"]))
    largest_sample = 200  # 8x8 PNGs
    assert len(shards) > 2 and all(limit <= payload[n] < limit + largest_sample for n in shards[:-1])


def test_failure_mid_run_leaves_the_previous_dataset_whole(tmp_path: Path, monkeypatch):
    dataset = read_digits(size=8)
    write_dataset(dataset, tmp_path, WriteOptions(max_samples=200, workers=1))
    before = folder_bytes(tmp_path)
    real = data_prep.writer.write_index
    calls = []

    def dies_on_second_shard(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(data_prep.writer, "write_index", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(dataset, tmp_path, WriteOptions(max_samples=100, workers=1))
    assert folder_bytes(tmp_path) == before  # manifest and shards untouched, no partial left
    monkeypatch.undo()
    write_dataset(dataset, tmp_path, WriteOptions(max_samples=100, workers=1))
    assert load_json(tmp_path / "manifest.json")["splits"]["train"]["num_samples"] == 1437
    assert len(list(tmp_path.glob("train-*.tar"))) == 15  # the 8 shards of 200 replaced by 15 of 100


@pytest.mark.slow
def test_killed_process_publishes_nothing(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-m", "data_prep", "digits", "--out", str(tmp_path), "--size", "256",
                             "--max-samples", "20", "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    staged = tmp_path / "digits" / "train-000000.idx.partial"  # the first shard is complete and indexed
    deadline = time.monotonic() + 60
    while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-run, not finished
    names = {p.name for p in (tmp_path / "digits").iterdir()}
    assert "train-000000.tar.partial" in names and all(n.endswith(".partial") for n in names)


def test_index_matches_wds2idx_and_dali_reads_it(tmp_path: Path):
    manifest = write_dataset(read_digits(splits=["test"]), tmp_path, WriteOptions(max_samples=150, workers=1))
    shard = manifest["splits"]["test"]["shards"][1]
    reference = tmp_path / "reference.idx"
    with IndexCreator(str(tmp_path / shard["file"]), str(reference), verbose=False) as creator:
        creator.create_index()
    assert (tmp_path / shard["index"]).read_text() == reference.read_text()

    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=shard["num_samples"], num_threads=1, device_id=None)
    def read():
        png, cls = fn.readers.webdataset(paths=[str(tmp_path / shard["file"])],
                                         index_paths=[str(tmp_path / shard["index"])], ext=["png", "cls"],
                                         missing_component_behavior="error")
        return png, cls, fn.decoders.image(png, device="cpu")

    pipe = read()
    pipe.build()
    png, cls, pixels = pipe.run()
    samples = [s for s in read_shards(tmp_path, "test").values() if s["shard"] == shard["file"]]
    assert len(samples) == shard["num_samples"]
    for i, sample in enumerate(samples):
        assert np.asarray(png[i]).tobytes() == sample["bytes"]
        assert int(np.asarray(cls[i]).tobytes()) == sample["cls"]
        np.testing.assert_array_equal(np.asarray(pixels[i]), sample["pixels"])
