"""DownloadDataset and fetch_dataset against misbehaving mirrors on 127.0.0.1."""

import gzip
import json
import logging
import re
import socket
import struct
import time

import luigi
import pytest
from luigi.execution_summary import LuigiStatusCode

from fakedata import checksums_for, make_idx_dataset
from pipeline import tasks
from pipeline.download import FILES, MAX_DOWNLOAD_BYTES, fetch_dataset, validate_dataset_name
from pipeline.errors import DataError, DownloadError, ParameterError

FAST = dict(timeout=2.0, retries=2, backoff=0.01)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A generated dataset as a mirror would publish it, and its hashes."""
    directory = tmp_path_factory.mktemp("published")
    return directory, make_idx_dataset(directory, n_train=120, n_test=30)


def files_in(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_second_bad_mirror_and_404_are_skipped_and_the_third_serves(tmp_path, published, mirrors):
    directory, hashes = published
    missing, corrupt, good = mirrors(directory, "404"), mirrors(directory, "corrupt"), mirrors(directory, "ok")
    dest = tmp_path / "raw" / "mnist"
    manifest = fetch_dataset("mnist", dest, mirrors=[missing.url, corrupt.url, good.url],
                             checksums=checksums_for(hashes), **FAST)
    assert files_in(dest) == sorted(list(FILES) + ["MANIFEST.json"])
    for name in FILES:
        entry = manifest["files"][name]
        assert entry["source"] == good.url + name
        assert entry["md5"] == hashes[name]["md5"] and entry["content_sha256"] == hashes[name]["content_sha256"]
        assert (dest / name).read_bytes() == (directory / name).read_bytes()
    assert json.loads((dest / "MANIFEST.json").read_text()) == manifest
    assert len(missing.requests) == 4 and len(corrupt.requests) == 4 and len(good.requests) == 4


def test_when_every_mirror_fails_the_error_names_each_and_nothing_is_left(tmp_path, published, mirrors):
    directory, hashes = published
    bad = [mirrors(directory, "404"), mirrors(directory, "corrupt"), mirrors(directory, "html")]
    dest = tmp_path / "raw" / "mnist"
    with pytest.raises(DownloadError) as error:
        fetch_dataset("mnist", dest, mirrors=[m.url for m in bad], checksums=checksums_for(hashes), **FAST)
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert f"{bad[0].url}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{bad[1].url}train-images-idx3-ubyte.gz: the file: corrupt or truncated gzip" in message
    assert f"{bad[2].url}train-images-idx3-ubyte.gz: not a gzip file" in message
    assert files_in(dest) == []
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []  # no staging directory left either


def test_a_rerun_after_success_makes_no_request(tmp_path, published, mirrors):
    directory, hashes = published
    good = mirrors(directory, "ok")
    params = dict(dataset="mnist", data_dir=str(tmp_path), local_dirs=[], mirrors=[good.url],
                  checksums=checksums_for(hashes))
    for _ in range(2):
        result = luigi.build([tasks.EncodeLabels(**params), tasks.NormalizeImages(**params)],
                             local_scheduler=True, detailed_summary=True)
        assert result.status == LuigiStatusCode.SUCCESS
    assert len(good.requests) == 4
    stamp = (tmp_path / "processed" / "mnist" / "images.h5").stat().st_mtime_ns
    luigi.build([tasks.NormalizeImages(**params)], local_scheduler=True)
    assert (tmp_path / "processed" / "mnist" / "images.h5").stat().st_mtime_ns == stamp
    assert len(good.requests) == 4


def test_a_recompressed_copy_passes_through_the_content_hash(tmp_path, published, mirrors):
    directory, hashes = published
    recompressed = tmp_path / "recompressed"
    recompressed.mkdir()
    for name in FILES:  # same IDX content, other gzip bytes, as Debian ships Fashion-MNIST
        (recompressed / name).write_bytes(gzip.compress(gzip.decompress((directory / name).read_bytes()),
                                                        compresslevel=1, mtime=12345))
        assert (recompressed / name).read_bytes() != (directory / name).read_bytes()
    both = {name: [h["md5"], h["content_sha256"]] for name, h in hashes.items()}
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[mirrors(recompressed).url],
                             checksums=both, **FAST)
    assert {e["verified_by"] for e in manifest["files"].values()} == {"sha256 of the decompressed content"}
    with pytest.raises(DownloadError, match="checksum mismatch"):  # the .gz md5 alone does not match
        fetch_dataset("mnist", tmp_path / "raw2" / "mnist", mirrors=[mirrors(recompressed).url],
                      checksums=checksums_for(hashes, "md5"), **FAST)


@pytest.mark.parametrize("mode, reason", [
    ("hang", "timed out"), ("truncate", "connection broken"), ("500", "HTTP 500"), ("html", "not a gzip file"),
])
def test_a_misbehaving_mirror_is_left_for_the_next(tmp_path, published, mirrors, mode, reason):
    directory, hashes = published
    bad, good = mirrors(directory, mode), mirrors(directory, "ok")
    settings = {**FAST, "timeout": 0.5} if mode == "hang" else FAST
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[bad.url, good.url],
                             checksums=checksums_for(hashes), **settings)
    assert all(e["source"].startswith(good.url) for e in manifest["files"].values())
    with pytest.raises(DownloadError, match=reason):
        fetch_dataset("mnist", tmp_path / "raw2" / "mnist", mirrors=[bad.url], checksums=checksums_for(hashes),
                      **settings)
    assert not (tmp_path / "raw2" / "mnist").exists()


def test_transient_errors_are_retried_a_bounded_number_of_times_then_the_mirror_is_dropped(tmp_path, published,
                                                                                          mirrors, caplog):
    directory, hashes = published
    flaky, good = mirrors(directory, "500"), mirrors(directory, "ok")
    with caplog.at_level(logging.INFO, logger="luigi-interface.pipeline"):
        manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[flaky.url, good.url],
                                 checksums=checksums_for(hashes), timeout=1, retries=3, backoff=0.01)
    assert len(flaky.requests) == 3  # three tries for the first file, none for the other three
    assert len(good.requests) == 4 and len(manifest["files"]) == 4
    assert "t10k-labels-idx1-ubyte.gz: not tried (HTTP 500 Internal Server Error (3 tries)" in caplog.text


def test_a_redirect_to_another_loopback_mirror_is_followed(tmp_path, published, mirrors):
    directory, hashes = published
    good = mirrors(directory, "ok")
    hop = mirrors(directory, "redirect", target=good)
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[hop.url], checksums=checksums_for(hashes),
                             **FAST)
    assert len(good.requests) == 4 and len(manifest["files"]) == 4


def test_an_unreachable_mirror_fails_fast_with_a_clear_reason(tmp_path, published):
    _, hashes = published
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"cannot connect"):
        fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[f"http://127.0.0.1:{port}/"],
                      checksums=checksums_for(hashes), **FAST)


def test_local_directories_come_before_mirrors_and_may_hold_plain_idx(tmp_path, published, mirrors):
    directory, hashes = published
    plain = tmp_path / "plain"
    make_idx_dataset(plain, n_train=120, n_test=30, compress=False)
    good = mirrors(directory, "ok")
    both = {name: [h["md5"], h["content_sha256"]] for name, h in hashes.items()}
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", local_dirs=[str(tmp_path / "{dataset}-absent"),
                                                                              str(plain)],
                             mirrors=[good.url], checksums=both, **FAST)
    assert good.requests == []
    assert {e["stored_as"] for e in manifest["files"].values()} == {n[:-3] for n in FILES}


def test_a_damaged_gz_does_not_hide_a_good_plain_idx_beside_it(tmp_path, published, caplog):
    directory, hashes = published
    local = tmp_path / "local"
    make_idx_dataset(local, n_train=120, n_test=30, compress=False)
    damaged = local / "train-images-idx3-ubyte.gz"
    damaged.write_bytes((directory / damaged.name).read_bytes()[:500])  # cut short
    both = {name: [h["md5"], h["content_sha256"]] for name, h in hashes.items()}
    with caplog.at_level(logging.INFO, logger="luigi-interface.pipeline"):
        manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", source_dir=str(local), checksums=both, **FAST)
    entry = manifest["files"][damaged.name]
    assert entry["source"] == str(local / "train-images-idx3-ubyte") and entry["stored_as"] == "train-images-idx3-ubyte"
    assert f"{damaged}: the file: corrupt or truncated gzip" in caplog.text


def test_a_custom_dataset_is_validated_hashed_and_warned_about(tmp_path, caplog, mirrors, published):
    directory, hashes = published
    never = mirrors(directory, "ok")
    with caplog.at_level(logging.WARNING, logger="luigi-interface.pipeline"):
        manifest = fetch_dataset("my-digits", tmp_path / "raw" / "my-digits", source_dir=str(directory), **FAST)
    assert "custom dataset: no known checksums" in caplog.text
    assert manifest["files"]["train-labels-idx1-ubyte.gz"]["md5"] == hashes["train-labels-idx1-ubyte.gz"]["md5"]
    assert manifest["verified_with"].startswith("IDX structure only")
    with pytest.raises(DownloadError, match="custom dataset needs source_dir or local_dirs"):
        fetch_dataset("other-digits", tmp_path / "raw" / "other", **FAST)
    assert never.requests == []


def test_a_custom_dataset_with_a_damaged_file_is_refused(tmp_path, published):
    directory, _ = published
    broken = tmp_path / "broken"
    make_idx_dataset(broken, n_train=120, n_test=30)
    data = (broken / "t10k-images-idx3-ubyte.gz").read_bytes()
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(data[:len(data) // 3])
    with pytest.raises(DownloadError, match=r"broken/t10k-images-idx3-ubyte\.gz: the file: corrupt or truncated gzip"):
        fetch_dataset("mine", tmp_path / "raw" / "mine", source_dir=str(broken), **FAST)
    assert not (tmp_path / "raw" / "mine").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "..", "Upper", ".hidden", "x" * 80])
def test_dataset_names_cannot_escape_the_data_directory(name):
    with pytest.raises(ParameterError, match="invalid dataset"):
        validate_dataset_name(name)


def test_progress_is_logged_in_bytes_and_percent(tmp_path, published, mirrors, caplog):
    directory, hashes = published
    seen = []
    with caplog.at_level(logging.INFO, logger="luigi-interface.pipeline"):
        fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[mirrors(directory).url],
                      checksums=checksums_for(hashes), progress=lambda f, m: seen.append((f, m)), **FAST)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("bytes (100%)" in m for _, m in seen)


def test_a_mirror_that_sends_no_length_is_read_to_the_end_and_reported_in_bytes(tmp_path, published, mirrors):
    directory, hashes = published
    seen = []
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[mirrors(directory, "chunked").url],
                             checksums=checksums_for(hashes), progress=lambda f, m: seen.append(m), **FAST)
    assert {e["verified_by"] for e in manifest["files"].values()} == {"md5 of the file"}
    assert any(m.endswith("bytes (size not announced)") for m in seen)


def test_a_body_longer_than_its_announced_length_is_a_cut_gzip_and_the_next_mirror_serves(tmp_path, published,
                                                                                          mirrors):
    directory, hashes = published
    lying, good = mirrors(directory, "short-length"), mirrors(directory, "ok")
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[lying.url, good.url],
                             checksums=checksums_for(hashes), **FAST)
    assert all(e["source"].startswith(good.url) for e in manifest["files"].values())
    with pytest.raises(DownloadError, match="corrupt or truncated gzip"):
        fetch_dataset("mnist", tmp_path / "raw2" / "mnist", mirrors=[lying.url], checksums=checksums_for(hashes),
                      **FAST)


def test_mirrors_given_for_a_custom_dataset_are_not_asked(tmp_path, published, mirrors, caplog):
    directory, _ = published
    watched = mirrors(directory, "ok")
    with caplog.at_level(logging.WARNING, logger="luigi-interface.pipeline"), pytest.raises(DownloadError, match="not found"):
        fetch_dataset("my-digits", tmp_path / "raw" / "my-digits", local_dirs=[str(tmp_path / "absent")],
                      mirrors=[watched.url], **FAST)
    assert watched.requests == []
    assert f"only taken from local directories, so the mirrors {watched.url} are not tried" in caplog.text


def test_labels_and_images_in_swapped_files_are_refused(tmp_path, published):
    directory, _ = published
    swapped = tmp_path / "swapped"
    make_idx_dataset(swapped, n_train=120, n_test=30)
    (swapped / "t10k-labels-idx1-ubyte.gz").write_bytes((directory / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(DownloadError, match=r"t10k-labels-idx1-ubyte\.gz: holds images .* must hold labels"):
        fetch_dataset("mine", tmp_path / "raw" / "mine", source_dir=str(swapped), **FAST)


@pytest.mark.parametrize("n_train, n_test, file, part", [(0, 30, "train-images-idx3-ubyte.gz", "training"),
                                                         (120, 0, "t10k-images-idx3-ubyte.gz", "test")])
def test_a_custom_dataset_with_no_training_or_no_test_images_is_refused_at_download(tmp_path, n_train, n_test,
                                                                                    file, part):
    source = tmp_path / "source"
    make_idx_dataset(source, n_train=n_train, n_test=n_test)
    with pytest.raises(DataError) as error:
        fetch_dataset("mine", tmp_path / "raw" / "mine", source_dir=str(source), **FAST)
    assert str(error.value) == (f"{source / file} holds 0 images: a dataset needs {part} images; put a file "
                                f"holding at least one there, and its labels beside it")
    assert not (tmp_path / "raw" / "mine").exists()


@pytest.mark.parametrize("mode, target", [("ftp-redirect", "ftp://127.0.0.1:{port}/train-images-idx3-ubyte.gz"),
                                          ("file-redirect", "file:///etc/passwd")])
def test_a_redirect_to_a_scheme_other_than_http_is_refused_and_the_next_mirror_serves(tmp_path, published, mirrors,
                                                                                      mode, target):
    directory, hashes = published
    hop, good = mirrors(directory, mode), mirrors(directory, "ok")
    manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[hop.url, good.url],
                             checksums=checksums_for(hashes), **FAST)
    assert all(e["source"].startswith(good.url) for e in manifest["files"].values())
    target = target.format(port=hop.server.server_address[1])
    with pytest.raises(DownloadError, match=rf"redirected \(HTTP 302\) to {re.escape(target)}: refused, only http "
                                            rf"and https URLs are followed"):
        fetch_dataset("mnist", tmp_path / "raw2" / "mnist", mirrors=[hop.url], checksums=checksums_for(hashes),
                      **FAST)


def staged_sizes(dest):
    """Sizes of the files in the staging directories beside dest, as they are now."""
    return [p.stat().st_size for d in dest.parent.glob(f".{dest.name}.*.partial") for p in d.iterdir()]


def test_an_endless_body_is_cut_at_the_limit_and_the_next_mirror_serves(tmp_path, published, mirrors):
    directory, hashes = published
    endless, good = mirrors(directory, "endless"), mirrors(directory, "ok")
    dest = tmp_path / "raw" / "mnist"
    seen_staged = []
    manifest = fetch_dataset("mnist", dest, mirrors=[endless.url, good.url], checksums=checksums_for(hashes),
                             progress=lambda f, m: seen_staged.extend(staged_sizes(dest)) if good.url in m else None,
                             **FAST)
    assert all(e["source"].startswith(good.url) for e in manifest["files"].values())
    assert len(endless.requests) == 4 and max(seen_staged) < 1 << 20  # each cut body was deleted at once
    with pytest.raises(DownloadError, match=rf"{endless.url}train-images-idx3-ubyte.gz: the body went on past "
                                            rf"{MAX_DOWNLOAD_BYTES:,} bytes, the most accepted for this file; cut off"):
        fetch_dataset("mnist", tmp_path / "raw2" / "mnist", mirrors=[endless.url], checksums=checksums_for(hashes),
                      **FAST)
    assert [p.name for p in (tmp_path / "raw2").iterdir()] == []  # no staging directory left


def test_a_known_dataset_is_cut_just_past_its_published_size(tmp_path, published, mirrors):
    endless = mirrors(published[0], "endless")
    published_size = 9912422  # train-images-idx3-ubyte.gz of MNIST
    with pytest.raises(DownloadError, match=rf"past {published_size + published_size // 8 + 65536:,} bytes"):
        fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[endless.url], **FAST)
    assert endless.sent < 2 * published_size


def test_a_response_announcing_more_than_the_limit_is_not_downloaded(tmp_path, published, mirrors):
    directory, hashes = published
    huge = mirrors(directory, "huge-length")
    with pytest.raises(DownloadError, match=r"the response announces 1,000,000,000,000 bytes, more than the "
                                            rf"{MAX_DOWNLOAD_BYTES:,} accepted for this file; not downloaded"):
        fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[huge.url], checksums=checksums_for(hashes),
                      **FAST)
    assert huge.sent < MAX_DOWNLOAD_BYTES // 4  # what the socket buffers took before the client hung up


def test_a_dripping_mirror_is_dropped_at_the_deadline_and_the_next_serves(tmp_path, published, mirrors, caplog):
    directory, hashes = published
    drip, good = mirrors(directory, "drip"), mirrors(directory, "ok")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="luigi-interface.pipeline"):
        manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[drip.url, good.url],
                                 checksums=checksums_for(hashes), deadline=1.5, **FAST)
    assert time.monotonic() - started < 5
    assert all(e["source"].startswith(good.url) for e in manifest["files"].values())
    assert len(drip.requests) == 1  # dropped for the other three files
    assert f"{drip.url}train-images-idx3-ubyte.gz: not done within the deadline of 1.5 s (" in caplog.text
    assert "t10k-labels-idx1-ubyte.gz: not tried (not done within the deadline" in caplog.text


def test_a_local_copy_whose_header_overflows_int64_is_passed_over_for_the_next_source(tmp_path, published, caplog):
    directory, hashes = published
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "train-images-idx3-ubyte").write_bytes(struct.pack(">HBBIII", 0, 0x08, 3, 2 ** 22, 2 ** 21, 2 ** 21))
    with caplog.at_level(logging.INFO, logger="luigi-interface.pipeline"):
        manifest = fetch_dataset("mnist", tmp_path / "raw" / "mnist", local_dirs=[str(hostile), str(directory)],
                                 checksums=checksums_for(hashes), **FAST)
    assert manifest["files"]["train-images-idx3-ubyte.gz"]["source"] == str(directory / "train-images-idx3-ubyte.gz")
    assert ("the file: the header (4194304, 2097152, 2097152) announces 18446744073709551632 bytes, more than "
            "the 2147483648 allowed") in caplog.text


@pytest.mark.parametrize("settings, message", [
    (dict(retries=0), r"retries=0 is not allowed: give the number of tries per file and mirror, a whole number of 1"),
    (dict(retries=2.5), r"retries=2\.5 is not allowed"),
    (dict(timeout=0), r"timeout=0 is not allowed: give a number of seconds above 0"),
    (dict(timeout=-1.0), r"timeout=-1\.0 is not allowed"),
    (dict(timeout=float("nan")), r"timeout=nan is not allowed"),
    (dict(deadline=0), r"deadline=0 is not allowed: give a number of seconds above 0"),
    (dict(backoff=-1), r"backoff=-1 is not allowed: give a number of seconds, 0 or more"),
])
def test_bad_download_settings_are_refused_before_any_request(tmp_path, published, mirrors, settings, message):
    directory, hashes = published
    watched = mirrors(directory, "ok")
    with pytest.raises(ParameterError, match=message):
        fetch_dataset("mnist", tmp_path / "raw" / "mnist", mirrors=[watched.url], checksums=checksums_for(hashes),
                      **{**FAST, **settings})
    assert watched.requests == [] and not (tmp_path / "raw").exists()
