"""What the network reads: normalized images and one-hot labels, and the HDF5 files that hold them.

    images.h5   /train (n, 784) float32 in [0, 1], /test (m, 784) float32
    labels.h5   /train/one_hot (n, 10) float32, /train/labels (n,) uint8, /test/... alike
    attributes  dataset, source_sha256 (JSON: IDX file name -> sha256 of its content),
                format_version, created_at, package_version

The writers write to the path they are given (a temporary path, renamed on success); the
readers check layout, shapes, dtypes and value ranges, and a file that fails is a DataError
naming it and the command that rebuilds it.
"""

import datetime
import json
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline.errors import DataError

FORMAT_VERSION = 1


def normalize_images(images):
    """uint8 images (n, rows, cols) -> float32 (n, rows * cols) in [0, 1]: pixel / 255."""
    images = np.asarray(images)
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)


def one_hot(labels, n_classes=10):
    """Integer labels (n,) -> float32 (n, n_classes) with a single 1 per row."""
    labels = np.asarray(labels)
    encoded = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    encoded[np.arange(labels.shape[0]), labels] = 1.0
    return encoded


def write_images(path, x_train, x_test, *, dataset, source_sha256, framing=None):
    """x_train (n, 784), x_test (m, 784) float32 in [0, 1]; source_sha256 {IDX file name: hex};
    framing: how a picture is made into one of these images (pipeline.picture.FRAMINGS)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=x_train)
        f.create_dataset("test", data=x_test)
        _describe(f, dataset, source_sha256)
        if framing:
            f.attrs["framing"] = framing


def write_labels(path, train_labels, test_labels, train_one_hot, test_one_hot, *, dataset, source_sha256):
    """Integer labels (n,), (m,) stored as uint8; one-hot (n, 10), (m, 10) float32."""
    with h5py.File(path, "w") as f:
        for part, labels, encoded in (("train", train_labels, train_one_hot), ("test", test_labels, test_one_hot)):
            f.create_dataset(f"{part}/labels", data=np.asarray(labels, dtype=np.uint8))
            f.create_dataset(f"{part}/one_hot", data=encoded)
        _describe(f, dataset, source_sha256)


def read_images(path, parts=("train", "test")):
    """{"train": (n, 784) float32, "test": (m, 784) float32, "attrs": dict}, for the parts asked."""
    data = _read(path, {part: part for part in parts}, "NormalizeImages")
    for part in parts:
        _expect(data[part], (None, 784), np.float32, path, part, "NormalizeImages")
    return data


def read_image_rows(path, part, rows=None):
    """Images (len(rows), 784) float32 of one part at the sorted indices `rows`, read alone
    instead of the whole part; rows=None gives the part's number of images instead."""
    path = Path(path)
    fix = rebuild_hint(path, "NormalizeImages")
    try:
        with h5py.File(path, "r") as f:
            dataset = f.get(part)
            if not isinstance(dataset, h5py.Dataset):
                raise DataError(f"{path} lacks {part}: not an output of NormalizeImages; {fix}")
            _expect(dataset, (None, 784), np.float32, path, part, "NormalizeImages")
            return dataset.shape[0] if rows is None else dataset[np.asarray(rows)]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path} is damaged or not HDF5 ({error}); {fix}") from None


def read_labels(path, parts=("train", "test")):
    """{"train_labels" (n,) uint8, "train_one_hot" (n, 10) float32, "test_labels", "test_one_hot", "attrs"},
    for the parts asked."""
    names = {f"{part}_{kind}": f"{part}/{kind}" for part in parts for kind in ("labels", "one_hot")}
    data = _read(path, names, "EncodeLabels")
    for part in parts:
        labels = _expect(data[f"{part}_labels"], (None,), np.uint8, path, f"{part}/labels", "EncodeLabels")
        _expect(data[f"{part}_one_hot"], (labels.shape[0], 10), np.float32, path, f"{part}/one_hot", "EncodeLabels")
    return data


def rebuild_hint(path, task):
    """What to do about a damaged processed file: delete it and the command that rebuilds it.

    The dataset and data directory come from the layout <data_dir>/processed/<dataset>/<file>.
    """
    path = Path(path)
    if path.parent.parent.name == "processed":
        command = (f"luigi --module pipeline.tasks {task} --dataset {path.parent.name} "
                   f"--data-dir {path.parent.parent.parent} --local-scheduler")
    else:
        command = f"luigi --module pipeline.tasks {task} --dataset <name> --local-scheduler"
    return f"delete it and rerun ({command}, or any command that needs it) to rebuild it"


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
    fix = rebuild_hint(path, task)
    try:
        with h5py.File(path, "r") as f:
            missing = [name for name in names.values() if not isinstance(f.get(name), h5py.Dataset)]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)}: not an output of {task}; {fix}")
            data = {key: f[name][()] for key, name in names.items()}
            attrs = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in f.attrs.items()}
        attrs["source_sha256"] = json.loads(attrs.get("source_sha256", "{}"))
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise DataError(f"{path} is damaged or not HDF5 ({error}); {fix}") from None
    data["attrs"] = attrs
    return data


def _expect(array, shape, dtype, path, name, task):
    """array, after checking its dtype and shape (None: any length); DataError otherwise."""
    fits = array.ndim == len(shape) and all(want is None or got == want for got, want in zip(array.shape, shape))
    if not fits or array.dtype != dtype:
        wanted = "(" + ", ".join("n" if n is None else str(n) for n in shape) + (",)" if len(shape) == 1 else ")")
        raise DataError(f"{path}: {name} is {array.dtype} {array.shape}, expected {np.dtype(dtype)} {wanted}: "
                              f"not an output of {task}; {rebuild_hint(path, task)}")
    return array
