"""The real Fashion-MNIST from Debian's dataset-fashion-mnist: no network, known checksums.

Skipped where the package is not installed (.ci/run installs it where it can).
"""

import json
from pathlib import Path

import luigi
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

from pipeline import processed, tasks

DEBIAN = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DEBIAN.is_dir(), reason="dataset-fashion-mnist is not installed (apt-get install it)"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("real")
    params = dict(dataset="fashion-mnist", data_dir=str(data_dir), local_dirs=[str(DEBIAN)], mirrors=[])
    result = luigi.build([tasks.EncodeLabels(**params), tasks.NormalizeImages(**params)],
                         local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.SUCCESS
    return data_dir


def test_debians_recompressed_files_pass_through_the_content_hash(data_dir):
    manifest = json.loads((data_dir / "raw" / "fashion-mnist" / "MANIFEST.json").read_text())
    assert len(manifest["files"]) == 4
    for entry in manifest["files"].values():
        assert entry["verified_by"] == "sha256 of the decompressed content"
        assert entry["source"].startswith(str(DEBIAN))
    assert manifest["files"]["train-labels-idx1-ubyte.gz"]["content_sha256"] == \
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"


def test_processed_files_hold_60000_and_10000_rows_in_range(data_dir):
    images = processed.read_images(data_dir / "processed" / "fashion-mnist" / "images.h5")
    labels = processed.read_labels(data_dir / "processed" / "fashion-mnist" / "labels.h5")
    assert images["train"].shape == (60000, 784) and images["test"].shape == (10000, 784)
    assert images["train"].dtype == np.float32
    assert images["train"].min() == 0.0 and images["train"].max() == 1.0
    assert labels["train_one_hot"].shape == (60000, 10) and labels["test_labels"].shape == (10000,)
    assert np.all(labels["train_one_hot"].sum(axis=1) == 1)
    assert np.array_equal(labels["train_one_hot"].argmax(axis=1), labels["train_labels"])
    assert np.bincount(labels["train_labels"]).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert images["attrs"]["source_sha256"]["t10k-images-idx3-ubyte.gz"] == \
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"


def test_two_epochs_on_the_real_data_learn_well_above_chance(data_dir, tmp_path):
    params = dict(dataset="fashion-mnist", data_dir=str(data_dir), local_dirs=[str(DEBIAN)], mirrors=[],
                  artifacts_dir=str(tmp_path), hidden_size=50, batch_size=100, learning_rate=0.1,
                  iterations=1200, weight_init_std=0.01, seed=0, dtype="float32", sampling="with-replacement")
    result = luigi.build([tasks.EvaluateNetwork(**params)], local_scheduler=True, detailed_summary=True)
    assert result.status == LuigiStatusCode.SUCCESS
    metrics = json.loads(Path(tasks.EvaluateNetwork(**params).output().path).read_text())
    assert metrics["final"]["test_accuracy"] > 0.7
    assert [row["iteration"] for row in metrics["epochs"]] == [0, 600, 1200]
