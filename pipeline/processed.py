"""HDF5 files of processed data: images.h5 (normalized images) and labels.h5 (labels).

    images.h5   /train (n, 784) float32 in [0, 1], /test (m, 784) float32
    labels.h5   /train/one_hot (n, 10) float32, /train/labels (n,) uint8, /test/... alike
    attributes  dataset, source_sha256 (JSON: IDX file name -> sha256 of its content),
                format_version, created_at, package_version

The writers write to the path they are given (the task hands them a temporary path that
luigi renames on success); the readers check the layout and name the file and the fix.
"""

import datetime
import json
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.errors import CheckpointError

FORMAT_VERSION = 1


def write_images(path, x_train, x_test, *, dataset, source_sha256):
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=x_train)
        f.create_dataset("test", data=x_test)
        _describe(f, dataset, source_sha256)


def write_labels(path, train_labels, test_labels, train_one_hot, test_one_hot, *, dataset, source_sha256):
    with h5py.File(path, "w") as f:
        for part, labels, encoded in (("train", train_labels, train_one_hot), ("test", test_labels, test_one_hot)):
            f.create_dataset(f"{part}/labels", data=np.asarray(labels, dtype=np.uint8))
            f.create_dataset(f"{part}/one_hot", data=encoded)
        _describe(f, dataset, source_sha256)


def read_images(path):
    """{"train": (n, 784) float32, "test": (m, 784) float32, "attrs": dict}."""
    return _read(path, {"train": "train", "test": "test"}, "NormalizeImages")


def read_labels(path):
    """{"train_labels", "train_one_hot", "test_labels", "test_one_hot", "attrs"}."""
    names = {f"{part}_{kind}": f"{part}/{kind}" for part in ("train", "test") for kind in ("labels", "one_hot")}
    return _read(path, names, "EncodeLabels")


def _describe(f, dataset, source_sha256):
    f.attrs.update({
        "dataset": dataset,
        "source_sha256": json.dumps(source_sha256, sort_keys=True),
        "format_version": FORMAT_VERSION,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
    })


def _read(path, names, task):
    path = Path(path)
    fix = (f"delete it and rerun (luigi --module pipeline.tasks {task} --dataset <name> --local-scheduler, "
           f"or any command that needs it) to rebuild it")
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in names.values() if name not in f]
            if missing:
                raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a {task} output; {fix}")
            data = {key: f[name][()] for key, name in names.items()}
            attrs = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in f.attrs.items()}
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged or not HDF5 ({error}); {fix}") from None
    attrs["source_sha256"] = json.loads(attrs.get("source_sha256", "{}"))
    data["attrs"] = attrs
    return data
