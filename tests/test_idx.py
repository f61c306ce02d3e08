"""IDX reading: every kind of damage is a DataError naming the file and the problem."""

import gzip
import struct

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.idx import (MAX_CONTENT_BYTES, decompress, encode_idx, idx_content, parse_idx, read_idx,
                          read_images_and_labels, write_idx)
from pipeline.processed import normalize_images, one_hot


@pytest.fixture
def pair(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels)
    return tmp_path / "images.gz", tmp_path / "labels.gz", images, labels


def test_roundtrip_gzipped_and_plain(tmp_path, pair):
    images_path, labels_path, images, labels = pair
    assert np.array_equal(read_idx(images_path), images)
    write_idx(tmp_path / "plain", labels, compress=False)
    assert (tmp_path / "plain").read_bytes()[:4] == b"\x00\x00\x08\x01"
    assert np.array_equal(read_idx(tmp_path / "plain"), labels)
    got_images, got_labels = read_images_and_labels(images_path, labels_path)
    assert got_images.shape == (3, 28, 28) and got_labels.tolist() == [7, 0, 9]


def test_truncated_gzip_is_named(tmp_path, pair):
    data = pair[0].read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")


def test_wrong_magic_is_named(tmp_path):
    (tmp_path / "bad").write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 64))
    with pytest.raises(DataError, match=r"bad: wrong magic number 0x00000903"):
        read_idx(tmp_path / "bad")
    (tmp_path / "html").write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match=r"html: wrong magic number"):
        read_idx(tmp_path / "html")


def test_short_and_overlong_files_are_named(tmp_path):
    content = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    (tmp_path / "short").write_bytes(content[:-5])
    with pytest.raises(DataError, match=r"short: file is short: 1579 bytes, the header \(2, 28, 28\) needs 1584"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(content + b"xx")
    with pytest.raises(DataError, match="longer than its header says"):
        read_idx(tmp_path / "long")


def test_mismatched_counts_are_named(tmp_path, pair):
    write_idx(tmp_path / "two-labels.gz", np.array([1, 2], dtype=np.uint8))
    with pytest.raises(DataError, match=r"has 3 images but .*two-labels\.gz has 2 labels"):
        read_images_and_labels(pair[0], tmp_path / "two-labels.gz")


def test_labels_out_of_range_and_swapped_files_are_named(tmp_path, pair):
    write_idx(tmp_path / "eleven.gz", np.array([1, 11, 2], dtype=np.uint8))
    with pytest.raises(DataError, match=r"eleven\.gz: label 11 is out of range 0-9"):
        read_images_and_labels(pair[0], tmp_path / "eleven.gz")
    with pytest.raises(DataError, match="holds labels .* not images"):
        read_images_and_labels(pair[1], pair[1])


def test_normalized_pixels_lie_in_0_1_and_one_hot_is_one_hot(pair):
    images, labels = pair[2], pair[3]
    x = normalize_images(images)
    assert x.shape == (3, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x[0, 255] == np.float32(255) / np.float32(255)
    encoded = one_hot(labels)
    assert encoded.shape == (3, 10) and encoded.dtype == np.float32
    assert np.all(encoded.sum(axis=1) == 1) and np.array_equal(encoded.argmax(axis=1), labels)


def test_a_gzip_with_flipped_bytes_is_named(tmp_path, pair):
    data = bytearray(pair[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: a bad block or a CRC mismatch
    (tmp_path / "flipped.gz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"flipped\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "flipped.gz")


def test_a_header_cut_short_and_a_missing_file_are_named(tmp_path):
    (tmp_path / "stub").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(DataError, match=r"stub: header cut short \(8 bytes, 16 needed\)"):
        read_idx(tmp_path / "stub")
    with pytest.raises(DataError, match=r"absent\.gz: cannot read"):
        read_idx(tmp_path / "absent.gz")


def test_gzip_that_would_expand_beyond_the_limit_is_refused_without_expanding_it():
    bomb = gzip.compress(bytes(10_000_000))  # 10 MB of zeros in about 10 kB
    assert len(bomb) < 20_000
    with pytest.raises(DataError, match=r"bomb\.gz: decompresses to more than 1000000 bytes; refused"):
        decompress(bomb, "bomb.gz", limit=1_000_000)
    assert decompress(bomb, "bomb.gz", limit=10_000_000) == bytes(10_000_000)


def test_a_gzip_file_of_several_members_decompresses_to_all_of_them():
    header, body = b"\x00\x00\x08\x01\x00\x00\x00\x03", bytes([1, 2, 3])
    two_members = gzip.compress(header) + gzip.compress(body)
    assert decompress(two_members) == header + body
    assert parse_idx(decompress(two_members)).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        decompress(two_members + b"not gzip")


OVERFLOWING = struct.pack(">HBBIII", 0, 0x08, 3, 2 ** 22, 2 ** 21, 2 ** 21)  # 2^64 pixels: int64 wraps to 0


def test_a_header_whose_sizes_overflow_int64_is_refused_as_data_error(tmp_path):
    with pytest.raises(DataError, match=r"huge: file is short: 16 bytes, the header \(4194304, 2097152, 2097152\) "
                                        r"needs 18446744073709551632"):
        parse_idx(OVERFLOWING, "huge")
    (tmp_path / "huge").write_bytes(OVERFLOWING)
    (tmp_path / "huge.gz").write_bytes(gzip.compress(OVERFLOWING))
    for path in (tmp_path / "huge", tmp_path / "huge.gz"):
        with pytest.raises(DataError, match=rf"{path.name}: the header \(4194304, 2097152, 2097152\) announces "
                                            rf"18446744073709551632 bytes, more than the {MAX_CONTENT_BYTES} allowed"):
            read_idx(path)


def test_a_gzip_holding_more_than_its_header_announces_is_refused_while_counting():
    header = encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))
    stuffed = gzip.compress(header + bytes(50_000_000))
    with pytest.raises(DataError, match=r"stuffed\.gz: decompresses to more than the 1584 bytes its header "
                                        r"\(2, 28, 28\) announces; refused"):
        decompress(stuffed, "stuffed.gz")


def test_a_gzip_that_does_not_start_as_idx_is_refused_at_its_first_bytes_when_idx_is_required():
    zeros = gzip.compress(bytes(50_000_000))
    with pytest.raises(DataError, match=r"zeros\.gz: wrong magic number 0x00000000"):
        idx_content(zeros, "zeros.gz")
    labels = encode_idx(np.array([3, 1, 4], dtype=np.uint8))
    assert idx_content(gzip.compress(labels), "labels.gz") == labels
    assert idx_content(labels, "labels") == labels


def test_a_plain_file_over_the_limit_is_refused_from_its_size_without_being_read(tmp_path):
    sparse = tmp_path / "sparse-idx"
    with open(sparse, "wb") as file:
        file.write(OVERFLOWING[:4] + struct.pack(">III", 3_000_000, 28, 28))
        file.truncate(MAX_CONTENT_BYTES + 1)  # a hole: no disk space, and no memory unless read
    with pytest.raises(DataError, match=rf"sparse-idx: {MAX_CONTENT_BYTES + 1} bytes, more than the "
                                        rf"{MAX_CONTENT_BYTES} allowed; refused"):
        read_idx(sparse)
    with pytest.raises(DataError, match="more than the 10 allowed"):
        decompress(bytes(11), "eleven", limit=10)


def test_gzip_members_split_across_feeding_pieces_decompress_to_the_same_bytes():
    rng = np.random.default_rng(0)
    content = encode_idx(rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8))  # 235 kB, incompressible
    members = b"".join(gzip.compress(content[i:i + 70_001]) for i in range(0, len(content), 70_001))
    assert decompress(members) == content
    assert bytes(idx_content(members)) == content
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        decompress(members[:-3])
