"""DownloadDataset, NormalizeImages and EncodeLabels through Luigi, against loopback mirrors
and generated datasets. Every parameter is passed; nothing leaves 127.0.0.1."""

import json
from pathlib import Path

import h5py
import luigi
import luigi.scheduler
import numpy as np
import pytest
from luigi.execution_summary import LuigiStatusCode

import pipeline
from fakedata import checksums_for, learnable_arrays, make_idx_dataset
from pipeline import processed, tasks

from pipeline.errors import DataError, ParameterError
from pipeline.idx import write_idx
from pipeline.processed import normalize_images
from runner import build


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A generated dataset as a mirror would publish it, and its hashes."""
    directory = tmp_path_factory.mktemp("published")
    return directory, make_idx_dataset(directory, n_train=120, n_test=30, seed=2)


def params(data_dir, hashes, mirror_urls, **extra):
    """Every data parameter, explicit: no luigi.cfg, no local directories, short timeouts."""
    return dict(dataset="mnist", data_dir=str(data_dir), local_dirs=[], mirrors=mirror_urls,
                checksums=checksums_for(hashes), timeout=2.0, retries=1, **extra)


def files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*") if p.is_file())


def test_processed_files_hold_normalized_images_labels_and_the_source_checksums(tmp_path, published, mirrors):
    directory, hashes = published
    shared = params(tmp_path, hashes, [mirrors(directory, "ok").url])
    assert build(tasks.NormalizeImages(**shared), tasks.EncodeLabels(**shared))[0] == LuigiStatusCode.SUCCESS

    images = processed.read_images(tmp_path / "processed" / "mnist" / "images.h5")
    labels = processed.read_labels(tmp_path / "processed" / "mnist" / "labels.h5")
    arrays = learnable_arrays(120, 30, seed=2)
    assert images["train"].shape == (120, 784) and images["test"].shape == (30, 784)
    assert images["train"].dtype == np.float32 and 0.0 <= images["train"].min() and images["train"].max() <= 1.0
    assert np.array_equal(images["test"], normalize_images(arrays["test_images"]))
    assert np.array_equal(labels["train_labels"], arrays["train_labels"]) and labels["train_labels"].dtype == np.uint8
    assert labels["test_one_hot"].shape == (30, 10) and np.all(labels["test_one_hot"].sum(axis=1) == 1)
    assert np.array_equal(labels["test_one_hot"].argmax(axis=1), labels["test_labels"])

    content_hashes = {name: h["content_sha256"] for name, h in hashes.items()}
    for attrs in (images["attrs"], labels["attrs"]):
        assert attrs["dataset"] == "mnist" and attrs["source_sha256"] == content_hashes
        assert attrs["format_version"] == processed.FORMAT_VERSION
        assert attrs["package_version"] == pipeline.__version__ and attrs["created_at"]
    with h5py.File(tmp_path / "processed" / "mnist" / "labels.h5", "r") as f:  # plain h5py sees the layout
        assert sorted(f["train"]) == ["labels", "one_hot"] and json.loads(f.attrs["source_sha256"]) == content_hashes


def test_download_progress_reaches_luigis_percentage_and_ends_at_100(tmp_path, published, mirrors, monkeypatch):
    directory, hashes = published
    seen = []  # what a luigid page would show: the percentages the scheduler is told
    monkeypatch.setattr(luigi.scheduler.Scheduler, "set_task_progress_percentage",
                        lambda self, task_id, percent: seen.append(percent))
    assert build(tasks.DownloadDataset(**params(tmp_path, hashes, [mirrors(directory).url])))[0] == \
        LuigiStatusCode.SUCCESS
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) >= 4


def test_a_custom_dataset_comes_from_source_dir_and_never_from_a_mirror(tmp_path, published, mirrors):
    directory, hashes = published
    watched = mirrors(directory, "ok")
    custom = dict(dataset="my-digits", data_dir=str(tmp_path), local_dirs=[], mirrors=[watched.url])
    assert build(tasks.EncodeLabels(source_dir=str(directory), **custom))[0] == LuigiStatusCode.SUCCESS
    manifest = json.loads((tmp_path / "raw" / "my-digits" / "MANIFEST.json").read_text())
    assert manifest["verified_with"].startswith("IDX structure only")
    assert manifest["files"]["t10k-labels-idx1-ubyte.gz"]["sha256"] == hashes["t10k-labels-idx1-ubyte.gz"]["sha256"]

    status, failures = build(tasks.DownloadDataset(dataset="other-digits", data_dir=str(tmp_path),
                                                          local_dirs=[str(tmp_path / "absent")],
                                                          mirrors=[watched.url]))
    assert status == LuigiStatusCode.FAILED and "absent/train-images-idx3-ubyte.gz: not found" in failures[0][1]
    assert watched.requests == []


def test_a_custom_dataset_whose_counts_disagree_is_refused_at_download(tmp_path):
    source = tmp_path / "source"
    make_idx_dataset(source, n_train=120, n_test=30)
    write_idx(source / "t10k-labels-idx1-ubyte.gz", np.zeros(29, dtype=np.uint8))
    status, failures = build(tasks.DownloadDataset(dataset="mine", data_dir=str(tmp_path / "data"),
                                                          source_dir=str(source), local_dirs=[], mirrors=[]))
    assert status == LuigiStatusCode.FAILED
    assert "t10k-images-idx3-ubyte.gz has 30 images but" in failures[0][1]
    assert "t10k-labels-idx1-ubyte.gz has 29 labels" in failures[0][1]
    assert files_under(tmp_path / "data" / "raw") == []


def test_images_of_another_size_are_refused_with_the_size_named(tmp_path):
    source = tmp_path / "source"
    make_idx_dataset(source, n_train=120, n_test=30)
    write_idx(source / "train-images-idx3-ubyte.gz", np.zeros((120, 32, 32), dtype=np.uint8))
    status, failures = build(tasks.DownloadDataset(dataset="mine", data_dir=str(tmp_path / "data"),
                                                          source_dir=str(source), local_dirs=[], mirrors=[]))
    assert status == LuigiStatusCode.FAILED
    assert "train-images-idx3-ubyte.gz: images are 32x32 pixels; the network needs 28x28" in failures[0][1]


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", "", "Fashion"])
def test_a_dataset_name_that_could_leave_data_dir_is_refused_before_any_file(tmp_path, name):
    with pytest.raises(ParameterError, match="invalid dataset"):
        tasks.DownloadDataset(dataset=name, data_dir=str(tmp_path / "data"), local_dirs=[], mirrors=[])
    assert not (tmp_path / "data").exists()


@pytest.fixture
def built(tmp_path, published, mirrors):
    """data_dir with both processed files of the published dataset."""
    directory, hashes = published
    shared = params(tmp_path / "data", hashes, [mirrors(directory).url])
    assert build(tasks.NormalizeImages(**shared), tasks.EncodeLabels(**shared))[0] == LuigiStatusCode.SUCCESS
    return tmp_path / "data"


def rebuild_command(task, data_dir):
    return f"luigi --module pipeline.tasks {task} --dataset mnist --data-dir {data_dir} --local-scheduler"


def test_a_truncated_or_foreign_processed_file_names_the_command_that_rebuilds_it(built):
    images = built / "processed" / "mnist" / "images.h5"
    images.write_bytes(images.read_bytes()[:3000])
    with pytest.raises(DataError, match="is damaged or not HDF5") as error:
        processed.read_images(images)
    assert str(images) in str(error.value)
    assert f"delete it and rerun ({rebuild_command('NormalizeImages', built)}" in str(error.value)

    labels = built / "processed" / "mnist" / "labels.h5"
    labels.write_text("not HDF5 at all")
    with pytest.raises(DataError, match=rebuild_command("EncodeLabels", built)):
        processed.read_labels(labels)


def test_a_processed_file_of_the_wrong_layout_is_refused(built):
    images, labels = built / "processed" / "mnist" / "images.h5", built / "processed" / "mnist" / "labels.h5"
    with pytest.raises(DataError, match=r"lacks train/labels.*not an output of EncodeLabels"):
        processed.read_labels(images)
    with h5py.File(images, "r+") as f:
        del f["test"]
        f["test"] = np.zeros((30, 28, 28), dtype=np.float32)
    with pytest.raises(DataError, match=r"test is float32 \(30, 28, 28\), expected float32 \(n, 784\)"):
        processed.read_images(images)
    with h5py.File(labels, "r+") as f:
        del f["train/one_hot"]
        f["train/one_hot"] = np.zeros((119, 10), dtype=np.float32)
    with pytest.raises(DataError, match=r"train/one_hot is float32 \(119, 10\), expected float32 \(120, 10\)"):
        processed.read_labels(labels)


def test_a_rerun_of_complete_stages_downloads_and_rewrites_nothing(built, published, mirrors):
    directory, hashes = published
    watched = mirrors(directory, "ok")
    shared = params(built, hashes, [watched.url])
    images = built / "processed" / "mnist" / "images.h5"
    stamp = images.stat().st_mtime_ns
    assert build(tasks.NormalizeImages(**shared), tasks.EncodeLabels(**shared))[0] == LuigiStatusCode.SUCCESS
    assert images.stat().st_mtime_ns == stamp and watched.requests == []


def test_a_raw_file_deleted_after_the_fact_is_fetched_again_and_downstream_remade(built, published, mirrors):
    directory, hashes = published
    watched = mirrors(directory, "ok")
    shared = params(built, hashes, [watched.url])
    images = built / "processed" / "mnist" / "images.h5"
    before = {k: v[()] for k, v in h5py.File(images, "r").items()}
    (built / "raw" / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    assert tasks.NormalizeImages(**shared).stale_reason().startswith("DownloadDataset would run (missing: ")
    assert build(tasks.NormalizeImages(**shared), tasks.EncodeLabels(**shared))[0] == LuigiStatusCode.SUCCESS
    assert len(watched.requests) == 4
    with h5py.File(images, "r") as f:
        assert all(np.array_equal(f[k][()], v) for k, v in before.items())
    assert tasks.NormalizeImages(**shared).complete() and tasks.EncodeLabels(**shared).complete()


@pytest.mark.parametrize("value, problem", [('["https://a.example/mnist/" "https://b.example/mnist/"]', "delimiter"),
                                            ('"https://a.example/mnist/"', "")])
def test_a_malformed_mirrors_entry_in_luigi_cfg_is_named_with_how_to_write_it(tmp_path, value, problem):
    config = luigi.configuration.get_config()
    config.add_section("mirrors")
    try:
        config.set("mirrors", "mnist", value)
        task = tasks.DownloadDataset(dataset="mnist", data_dir=str(tmp_path / "data"), local_dirs=[])
        with pytest.raises(ParameterError, match=r"\[mirrors\] mnist in luigi.cfg is not a JSON list of URLs") as raised:
            task.run()
    finally:
        config.remove_section("mirrors")
    assert problem in str(raised.value) and 'mnist = ["https://' in str(raised.value)
    assert not (tmp_path / "data" / "raw" / "mnist").exists()
