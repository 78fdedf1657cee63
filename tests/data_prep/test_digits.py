import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prep_helpers import load_json, read_shards, run_cli
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.mark.slow
def test_cli_digits_subprocess(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "data_prep", "digits", "--out", str(tmp_path), "--size", "24",
                             "--seed", "3", "--workers", "1"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    manifest = load_json(tmp_path / "digits" / "manifest.json")
    assert manifest["image_size"] == [24, 24] and "verified" not in manifest
    assert {s: e["num_samples"] for s, e in manifest["splits"].items()} == {"train": 1437, "test": 360}

    digits = load_digits()
    _, test_idx = train_test_split(np.arange(1797), test_size=0.2, stratify=digits.target, random_state=3)
    test_idx = np.sort(test_idx)
    test = read_shards(tmp_path / "digits", "test")
    assert np.bincount([s["cls"] for s in test.values()]).tolist() == np.bincount(digits.target[test_idx]).tolist()
    for key, sample in list(test.items())[:50]:
        i = test_idx[int(key.rsplit("_", 1)[1])]
        grey = Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8))
        expected = np.asarray(grey.resize((24, 24), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(sample["pixels"], np.repeat(expected[:, :, None], 3, axis=2))
        assert sample["cls"] == digits.target[i]
    assert run_cli("verify", "--out", tmp_path, "--workers", 1) == 0
    assert load_json(tmp_path / "digits" / "manifest.json")["verified"] is True
