"""The IDX format of MNIST: read with every check, write for test fixtures.

An IDX file is a big-endian header, then the data: two zero bytes, a type code (0x08 for
unsigned bytes, the only one MNIST uses), the number of dimensions, one 4-byte size per
dimension, then prod(sizes) bytes. Magic numbers: 0x00000801 for labels (n,),
0x00000803 for images (n, rows, cols). Files may be gzip-compressed (they start 1f 8b).
"""

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
MAX_CONTENT_BYTES = 2 ** 31  # 2 GiB: 2.7 million 28x28 images; whole splits are held in memory anyway
_MAX_HEADER = 16  # bytes of the longest IDX header here: images, 3 dimensions
_IN_PIECE, _OUT_PIECE = 1 << 16, 1 << 20  # gzip bytes fed, decompressed bytes taken, per step


def read_limited(path, name=None, limit=MAX_CONTENT_BYTES):
    """The bytes of the file at path; DataError naming `name` (default: the path) when it
    is larger than `limit`, checked with stat first: an oversized file is not read."""
    path = Path(path)
    name = str(path) if name is None else name
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        data = file.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise DataError(f"{name}: {max(size, len(data))} bytes, more than the {limit} allowed; refused (an IDX "
                        f"dataset that large would not fit in memory)")
    return data


def read_bytes(path):
    """The file's content, decompressed when it is gzip; DataError for a damaged gzip or
    a file or content over MAX_CONTENT_BYTES."""
    return decompress(_read(path), str(path))


def _read(path):
    try:
        return read_limited(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None


def decompress(raw, name="data", limit=MAX_CONTENT_BYTES):
    """raw itself, or its gzip decompression when it starts with the gzip magic; a
    DataError naming `name` when the gzip stream is corrupt or cut short, or would
    decompress to more than `limit` bytes, or to more than the IDX header at its start
    announces. The stream is decompressed twice: once counting, holding at most a MiB at
    a time, so that a "gzip bomb" is refused without being held, then into a bytearray of
    the size counted."""
    return _expand(raw, name, limit, idx=False)


def idx_content(raw, name="data", limit=MAX_CONTENT_BYTES):
    """Like decompress, for raw (gzip or plain) that must hold IDX data: refused as soon as
    its first bytes are not an IDX header or the header announces more than `limit`."""
    return _expand(raw, name, limit, idx=True)


def _expand(raw, name, limit, idx):
    if not raw.startswith(GZIP_MAGIC):
        if len(raw) > limit:
            raise DataError(f"{name}: {len(raw)} bytes, more than the {limit} allowed; refused (an IDX dataset that "
                            f"large would not fit in memory)")
        if idx:
            _announced(raw[:_MAX_HEADER], name, limit, strict=True)
        return raw
    try:
        content = bytearray(_inflated_size(raw, name, limit, idx))
        position = 0
        for piece in _inflate(raw):
            content[position:position + len(piece)] = piece
            position += len(piece)
    except (EOFError, zlib.error) as error:
        raise DataError(f"{name}: corrupt or truncated gzip data ({error})") from None
    return content


def _inflated_size(raw, name, limit, idx):
    """Bytes the gzip raw decompresses to, counted without holding them; DataError as soon
    as they exceed `limit` or what the IDX header at their start announces."""
    head, size, announced = b"", 0, None
    for piece in _inflate(raw):
        if announced is None and len(head) < _MAX_HEADER:
            head += piece[:_MAX_HEADER - len(head)]
            announced = _announced(head, name, limit, strict=idx)
        size += len(piece)
        if announced is not None and size > announced[0]:
            raise DataError(f"{name}: decompresses to more than the {announced[0]} bytes its header {announced[1]} "
                            f"announces; refused")
        if size > limit:
            raise DataError(f"{name}: decompresses to more than {limit} bytes; refused (an IDX dataset that "
                            f"large would not fit in memory)")
    return size


def _inflate(raw):
    """The decompressed pieces (at most _OUT_PIECE bytes each) of the gzip members in raw,
    one after another; zlib.error or EOFError when the data is corrupt or cut short."""
    view, position = memoryview(raw), 0
    while position < len(raw):  # a gzip file may hold several members, one after another
        member, data = zlib.decompressobj(wbits=31), b""
        while not member.eof:
            if not data:
                data = view[position:position + _IN_PIECE]
                position += len(data)
            piece = member.decompress(data, _OUT_PIECE)
            data = member.unconsumed_tail
            if piece:
                yield piece
            elif not data and position >= len(raw):
                raise EOFError("compressed data ended before the end-of-stream marker was reached")
        position -= len(member.unused_data)  # the next member starts there


def _announced(head, name, limit, strict):
    """(total bytes, shape) that the IDX header at the start of `head` announces, or None
    while head is too short to tell (or, unless strict, is not an IDX header); DataError
    when strict and it is not one, or when the total is over `limit`. Python ints: header
    sizes are uint32, and their product can exceed int64."""
    if len(head) < 4:
        return None
    if not _is_idx_magic(head):
        if strict:
            _header(head, name)  # raises the wrong magic number error
        return None
    length = 4 + 4 * head[3]
    if len(head) < length:
        return None
    shape = struct.unpack(f">{head[3]}I", head[4:length])
    total = length + math.prod(shape)
    if total > limit:
        raise DataError(f"{name}: the header {shape} announces {total} bytes, more than the {limit} allowed; refused "
                        f"(an IDX dataset that large would not fit in memory)")
    return total, shape


def _is_idx_magic(content):
    zero, type_code, ndim = struct.unpack(">HBB", content[:4])
    return zero == 0 and type_code == 0x08 and ndim in (1, 3)


def _header(content, name):
    """(shape, header length) of the IDX header at the start of content; DataError naming
    `name` when the magic number is wrong or the header is cut short."""
    if len(content) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(content)} bytes)")
    if not _is_idx_magic(content):
        magic = struct.unpack(">I", content[:4])[0]
        raise DataError(f"{name}: wrong magic number 0x{magic:08x}; expected 0x{LABELS_MAGIC:08x} (labels) "
                        f"or 0x{IMAGES_MAGIC:08x} (images): not an MNIST-style IDX file")
    header = 4 + 4 * content[3]
    if len(content) < header:
        raise DataError(f"{name}: header cut short ({len(content)} bytes, {header} needed)")
    return struct.unpack(f">{content[3]}I", content[4:header]), header


def parse_idx(content, name="IDX data"):
    """Array of the IDX bytes `content` (uint8, shape from the header); DataError naming
    `name` when the magic number or the byte count is wrong. The count is compared in
    Python ints, so a header whose sizes multiply past int64 is refused like any other."""
    shape, header = _header(content, name)
    expected = header + math.prod(shape)
    if len(content) != expected:
        problem = "short" if len(content) < expected else "longer than its header says"
        raise DataError(f"{name}: file is {problem}: {len(content)} bytes, the header {shape} needs {expected}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path):
    """The array stored in an IDX file (gzipped or not): labels (n,) or images (n, rows, cols), uint8."""
    return parse_idx(idx_content(_read(path), str(path)), str(path))


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
