import pickle
from pathlib import Path

import numpy as np
import pytest
from prep_helpers import load_json, read_shards, run_cli


def test_pixels_and_labels_survive(cifar_src, tmp_path: Path):
    assert run_cli("cifar10", "--src", cifar_src["root"].parent, "--out", tmp_path, "--workers", 1) == 0
    batches = cifar_src["batches"]
    expected = {
        "train": (np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]),
                  [y for i in range(1, 6) for y in batches[f"data_batch_{i}"][1]]),
        "test": batches["test_batch"],
    }
    for split, (images, labels) in expected.items():
        samples = read_shards(tmp_path / "cifar10", split)
        assert len(samples) == len(images)
        for key, sample in samples.items():
            i = int(key.rsplit("_", 1)[1])
            np.testing.assert_array_equal(sample["pixels"], images[i])
            assert sample["cls"] == labels[i]
    manifest = load_json(tmp_path / "cifar10" / "manifest.json")
    assert manifest["classes"] == cifar_src["names"] and manifest["image_size"] == [32, 32]


def rewrite(path: Path, **changes) -> None:
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    content.update({k.encode(): v for k, v in changes.items()})
    with open(path, "wb") as f:
        pickle.dump(content, f)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "data_batch_3").unlink(), "data_batch_3: missing file"),
    (lambda r: rewrite(r / "data_batch_2", labels=[1, 2]), "data_batch_2: 2 labels for 3 images"),
    (lambda r: rewrite(r / "test_batch", data=np.zeros((4, 3000), np.uint8)), "test_batch: b'data' is uint8[4, 3000]"),
    (lambda r: (r / "test_batch").write_bytes(b"not a pickle"), "test_batch: not a CIFAR pickle"),
])
def test_bad_input(cifar_src, tmp_path: Path, capsys, damage, message):
    damage(cifar_src["root"])
    assert run_cli("cifar10", "--src", cifar_src["root"], "--out", tmp_path, "--workers", 1) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cifar10" / "manifest.json").exists()
