"""The IDX format of MNIST: read with every check, write for test fixtures.

An IDX file is a big-endian header, then the data: two zero bytes, a type code (0x08 for
unsigned bytes, the only one MNIST uses), the number of dimensions, one 4-byte size per
dimension, then prod(sizes) bytes. Magic numbers: 0x00000801 for labels (n,),
0x00000803 for images (n, rows, cols). Files may be gzip-compressed (they start 1f 8b).
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803


def read_bytes(path):
    """The file's content, decompressed when it is gzip; DataError for a damaged gzip."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    return decompress(raw, str(path))


MAX_CONTENT_BYTES = 2 ** 31  # 2 GiB: 2.7 million 28x28 images; whole splits are held in memory anyway


def decompress(raw, name="data", limit=MAX_CONTENT_BYTES):
    """raw itself, or its gzip decompression when it starts with the gzip magic; a
    DataError naming `name` when the gzip stream is corrupt or cut short, or would
    decompress to more than `limit` bytes (a "gzip bomb" is refused, never expanded)."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    content, rest = bytearray(), raw
    try:
        while rest:  # a gzip file may hold several members, one after another
            member = zlib.decompressobj(wbits=31)
            content += member.decompress(rest, limit + 1 - len(content))
            if len(content) > limit:
                raise DataError(f"{name}: decompresses to more than {limit} bytes; refused (an IDX dataset that "
                                f"large would not fit in memory)")
            if not member.eof:
                raise EOFError("compressed data ended before the end-of-stream marker was reached")
            rest = member.unused_data
    except (EOFError, zlib.error) as error:
        raise DataError(f"{name}: corrupt or truncated gzip data ({error})") from None
    return bytes(content)


def parse_idx(content, name="IDX data"):
    """Array of the IDX bytes `content` (uint8, shape from the header); DataError naming
    `name` when the magic number or the byte count is wrong."""
    if len(content) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(content)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", content[:4])
    magic = struct.unpack(">I", content[:4])[0]
    if zero != 0 or type_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{name}: wrong magic number 0x{magic:08x}; expected 0x{LABELS_MAGIC:08x} (labels) "
                        f"or 0x{IMAGES_MAGIC:08x} (images): not an MNIST-style IDX file")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{name}: header cut short ({len(content)} bytes, {header} needed)")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected:
        problem = "short" if len(content) < expected else "longer than its header says"
        raise DataError(f"{name}: file is {problem}: {len(content)} bytes, the header {shape} needs {expected}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path):
    """The array stored in an IDX file (gzipped or not): labels (n,) or images (n, rows, cols), uint8."""
    return parse_idx(read_bytes(path), str(path))


def read_images_and_labels(images_path, labels_path, n_classes=10):
    """(images (n, rows, cols), labels (n,)) after checking kinds, label range and counts."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    check_pair(images, labels, images_path, labels_path, n_classes)
    return images, labels


def check_images(images, name=None):
    """DataError unless the array holds images (n, rows, cols). name prefixes the message."""
    if images.ndim != 3:
        raise DataError(_named(name, f"holds labels (magic 0x{LABELS_MAGIC:08x}), not images; it must hold images"))


def check_labels(labels, name=None, n_classes=10):
    """DataError unless the array holds labels (n,) with values below n_classes."""
    if labels.ndim != 1:
        raise DataError(_named(name, f"holds images (magic 0x{IMAGES_MAGIC:08x}), not labels; it must hold labels"))
    if labels.size and labels.max() >= n_classes:
        raise DataError(_named(name, f"label {int(labels.max())} is out of range 0-{n_classes - 1}"))


def check_pair(images, labels, images_name, labels_name, n_classes=10):
    """DataError unless images is (n, rows, cols), labels is (n,) with values below n_classes."""
    check_images(images, images_name)
    check_labels(labels, labels_name, n_classes)
    check_counts(images.shape[0], labels.shape[0], images_name, labels_name)


def check_counts(n_images, n_labels, images_name, labels_name):
    """DataError unless an images file and its labels file hold equally many entries."""
    if n_images != n_labels:
        raise DataError(f"{images_name} has {n_images} images but {labels_name} has "
                        f"{n_labels} labels: the files do not belong together")


def _named(name, message):
    return f"{name}: {message}" if name else message


def encode_idx(array):
    """IDX bytes of a uint8 array of 1 (labels) or 3 (images) dimensions."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in (1, 3):
        raise ValueError("IDX arrays here are labels (n,) or images (n, rows, cols)")
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=True):
    """Write `array` as an IDX file, gzip-compressed when compress (for fixtures and tests)."""
    data = encode_idx(array)
    Path(path).write_bytes(gzip.compress(data, mtime=0) if compress else data)
