"""Locations are parsed once, where they enter: a malformed one is a one-line error naming it,
and a parsed one means the same on a disk and in a bucket (joins, relative names, roots)."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.errors import ParameterError
from runner import REPO, workspace


@pytest.mark.parametrize("text, why", [
    ("s3:", "no other scheme"),
    ("s3:/bkt/a", "no other scheme"),
    ("s3://", "is not a bucket name"),
    ("s3:///a", "is not a bucket name"),
    ("s3://B/x", "is not a bucket name"),
    ("s3://b/x", "is not a bucket name"),  # 3 characters at least
    ("s3://bucket..name/x", "is not a bucket name"),
    ("s3://bkt//x", "'//', '.' or '..'"),
    ("s3://bkt/a/../b", "'//', '.' or '..'"),
    ("s3://bkt/./b", "'//', '.' or '..'"),
    ("s3://bkt/a\nb", "control characters"),
    ("ftp://host/art", "no other scheme"),
    ("file:///tmp/x", "no other scheme"),
    ("", "it is empty"),
    ("   ", "it is empty"),
])
def test_a_malformed_location_is_one_line_naming_it(text, why):
    with pytest.raises(ParameterError) as caught:
        storage.parse(text, "artifacts_dir")
    message = str(caught.value)
    assert message.startswith(f"invalid artifacts_dir={text}: must be a directory path or s3://bucket/prefix")
    assert why in message and message.count("\n") == text.count("\n")


@pytest.mark.parametrize("text, parsed", [
    ("s3://bucket", "s3://bucket"),
    ("s3://bucket/", "s3://bucket"),
    ("s3://my.bucket-1/a/b/", "s3://my.bucket-1/a/b"),
    ("artifacts/", "artifacts"),
    ("/", "/"),
    ("../elsewhere/data", "../elsewhere/data"),
])
def test_a_good_location_is_kept_without_a_trailing_slash(text, parsed):
    assert storage.parse(text) == parsed


@pytest.mark.parametrize("base", ["s3://bucket/pre", "/srv/pipeline"])
def test_names_resolve_the_same_way_on_both_stores(base):
    record = storage.join(base, "artifacts", "synthetic", "run", "lineage", "TrainNetwork.json")
    model = storage.join(base, "artifacts", "synthetic", "run", "model.h5")
    name = storage.relative_name(model, storage.parent(record))
    assert name == "../model.h5"
    assert storage.resolve(storage.parent(record), name) == model
    images = storage.join(base, "data", "processed", "synthetic", "images.h5")
    assert storage.resolve(storage.parent(record), storage.relative_name(images, storage.parent(record))) == images
    assert storage.relative(model, storage.join(base, "artifacts")) == "synthetic/run/model.h5"
    assert storage.relative(model, storage.join(base, "data")) is None
    assert storage.basename(model) == "model.h5" and storage.parent(model).endswith("/run")


def test_a_root_maps_local_working_paths_to_its_locations(tmp_path):
    remote = storage.Root("s3://bucket/pre/artifacts", tmp_path / "cache", "artifacts")
    path = remote.path("synthetic", "run", "model.h5")
    assert remote.remote and path.is_relative_to(tmp_path / "cache")
    assert remote.where(path) == "s3://bucket/pre/artifacts/synthetic/run/model.h5"
    assert remote.local_path(remote.where(path)) == path
    other = storage.Root("s3://bucket/other", tmp_path / "cache", "artifacts")
    assert other.local != remote.local  # two buckets or prefixes never share a working copy
    local = storage.Root(str(tmp_path / "artifacts"), tmp_path / "cache", "artifacts")
    assert not local.remote and local.where(local.path("a", "b.h5")) == str(tmp_path / "artifacts" / "a" / "b.h5")


@pytest.mark.parametrize("flag", ["--data-dir", "--artifacts-dir"])
@pytest.mark.parametrize("value", ["s3:", "s3:/bkt/a", "s3://bkt//a"])
def test_the_command_line_refuses_a_malformed_location_before_any_file(tmp_path, flag, value):
    workdir = workspace(tmp_path / "w")
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--dataset", "fashion-mnist", flag, value],
                          cwd=workdir, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO),
                                                                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"invalid {flag[2:].replace('-', '_')}={value}" in lines[0], done.stderr
    assert sorted(p.name for p in Path(workdir).iterdir()) == ["luigi.cfg"]  # no s3: directory, nothing else
