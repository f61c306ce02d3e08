"""The tests' one generator of synthetic data: small, learnable MNIST-shaped sets, as arrays
or as the four IDX files with their hashes."""

import gzip
import hashlib
from pathlib import Path

import numpy as np

from pipeline.idx import encode_idx

FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}


def learnable_arrays(n_train=600, n_test=200, seed=0):
    """Ten random 28x28 prototypes, one per class, plus noise: uint8 images and labels that a
    small network learns to well above 90 % in a few hundred SGD steps."""
    prototypes = np.random.default_rng(1234).random((10, 28, 28))
    rng = np.random.default_rng(seed)

    def part(n):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        noisy = prototypes[labels] + 0.3 * rng.standard_normal((n, 28, 28))
        return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8), labels

    (train_images, train_labels), (test_images, test_labels) = part(n_train), part(n_test)
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels}


def learnable(n, seed=0, dtype=np.float32):
    """(x (n, 784) in [0, 1], integer labels (n,)) of the same problem, as the network reads it."""
    arrays = learnable_arrays(n, 0, seed)
    return (arrays["train_images"].reshape(n, -1) / 255).astype(dtype), arrays["train_labels"].astype(np.intp)


def file_hashes(data):
    """The hashes DownloadDataset compares: of the file as stored and of its IDX content."""
    content = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
            "content_sha256": hashlib.sha256(content).hexdigest()}


def make_idx_dataset(directory, n_train=600, n_test=200, seed=0, compress=True):
    """Write the four IDX files into directory; return {file name: hashes}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for key, array in learnable_arrays(n_train, n_test, seed).items():
        name = FILES[key] if compress else FILES[key][:-len(".gz")]
        content = encode_idx(array)
        data = gzip.compress(content, mtime=0) if compress else content
        (directory / name).write_bytes(data)
        hashes[FILES[key]] = file_hashes(data)
    return hashes


def checksums_for(hashes, kind="md5"):
    """The `checksums` parameter accepting exactly these files (by one kind of hash)."""
    return {name: [h[kind]] for name, h in hashes.items()}
