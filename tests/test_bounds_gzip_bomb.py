"""Gzip bombs of more than 2 GiB are refused with little memory: each is read in a
subprocess that reports its own peak RSS (VmHWM: ru_maxrss of a child also counts the
memory of the parent it was forked from, here pytest's)."""

import gzip
import json
import re
import struct
import subprocess
import sys

import pytest

from fakedata import make_idx_dataset
from pipeline.idx import MAX_CONTENT_BYTES

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")]

BOMB_CONTENT = 3 << 30  # bytes of zeros behind the header: more than MAX_CONTENT_BYTES
RSS_BOUND_MB = 400

PEAK_RSS = """
def peak_rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
"""

READ = PEAK_RSS + """
import json, sys
from pipeline.errors import DataError
from pipeline.idx import read_idx
try:
    read_idx(sys.argv[1])
    refusal = None
except DataError as error:
    refusal = str(error)
print(json.dumps({"refusal": refusal, "peak_rss_mb": peak_rss_mb()}))
"""

FETCH = PEAK_RSS + """
import json, sys
from pipeline.download import fetch_dataset
manifest = fetch_dataset("bombed", sys.argv[3], local_dirs=[sys.argv[1], sys.argv[2]], timeout=2.0, retries=1)
print(json.dumps({"source": manifest["files"]["train-images-idx3-ubyte.gz"]["source"],
                  "peak_rss_mb": peak_rss_mb()}))
"""


def write_bomb(path, n_images):
    """A 28x28 images header announcing n_images (none when 0), then BOMB_CONTENT zeros, as
    gzip members of 16 MiB each: about 3 MB, built in a fraction of a second."""
    header = struct.pack(">HBBIII", 0, 0x08, 3, n_images, 28, 28) if n_images else b""
    member = gzip.compress(bytes(16 << 20), compresslevel=9, mtime=0)
    path.write_bytes(gzip.compress(header, mtime=0) + member * (BOMB_CONTENT // (16 << 20)))
    assert path.stat().st_size < 4 << 20
    return path


def run(script, *args):
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("n_images, refusal", [
    (60000, r"decompresses to more than the 47040016 bytes its header \(60000, 28, 28\) announces; refused"),
    (0, r"wrong magic number 0x00000000"),
    (3_000_000, rf"the header \(3000000, 28, 28\) announces 2352000016 bytes, more than the {MAX_CONTENT_BYTES}"),
])
def test_a_3_gib_gzip_bomb_is_refused_in_tens_of_megabytes(tmp_path, n_images, refusal):
    result = run(READ, write_bomb(tmp_path / "bomb.gz", n_images))
    assert result["refusal"] is not None
    assert re.search(refusal, result["refusal"])
    assert result["peak_rss_mb"] < RSS_BOUND_MB


def test_a_gzip_bomb_in_a_local_directory_is_refused_and_the_next_directory_serves(tmp_path):
    bombed, good = tmp_path / "bombed", tmp_path / "good"
    bombed.mkdir()
    write_bomb(bombed / "train-images-idx3-ubyte.gz", 60000)
    make_idx_dataset(good, n_train=120, n_test=30)
    result = run(FETCH, bombed, good, tmp_path / "raw" / "bombed")
    assert result["source"] == str(good / "train-images-idx3-ubyte.gz")
    assert result["peak_rss_mb"] < RSS_BOUND_MB


@pytest.mark.slow
def test_a_bomb_whose_header_announces_just_under_the_cap_is_counted_not_held(tmp_path):
    """2,700,000 images announce 2,116,800,016 bytes, under the cap: the bomb is refused
    only past them, after some 7 s of decompressing, but never held."""
    result = run(READ, write_bomb(tmp_path / "bomb.gz", 2_700_000))
    assert "more than the 2116800016 bytes its header (2700000, 28, 28) announces" in result["refusal"]
    assert result["peak_rss_mb"] < RSS_BOUND_MB
