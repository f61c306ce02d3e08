"""From IDX arrays to what the network reads (numpy only, no I/O)."""

import numpy as np


def normalize_images(images):
    """uint8 images (n, rows, cols) -> float32 (n, rows * cols) in [0, 1]: pixel / 255.

    Division in float32, so that training can redo it bit for bit from the uint8 pixels.
    """
    images = np.asarray(images)
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255)


def one_hot(labels, n_classes=10):
    """Integer labels (n,) -> float32 (n, n_classes) with a single 1 per row."""
    labels = np.asarray(labels)
    encoded = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    encoded[np.arange(labels.shape[0]), labels] = 1.0
    return encoded
