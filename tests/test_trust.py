"""The one rule of trust, on a local disk and in a bucket (moto's server on 127.0.0.1) alike: a
file counts only while its bytes match the record that vouches for it. Each case tampers with
one finished file, as a user or another program could, and expects the same outcome on both:
`status` finds the chain stale, the same command runs again, and what it ends with is bit for
bit what an undisturbed run made."""

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from fakedata import make_idx_dataset
from runner import RUN, run, workspace, without_times
from s3server import S3Server

pytestmark = pytest.mark.slow  # a finished chain per backend, then a rerun per case

RUN_DIR = "artifacts/synthetic/h30-b50-lr0.5-s4-a297d990"


class Store:
    """A workspace whose data and artifacts live on the local disk or under a bucket prefix, with
    the same few operations on both, for tampering as a person with a shell or an S3 client would."""

    def __init__(self, backend, workdir, s3=None, prefix=None):
        self.backend, self.workdir, self.s3, self.prefix = backend, Path(workdir), s3, prefix
        self.env = {**os.environ, **(s3.env if s3 else {})}
        self.client = s3.client() if s3 else None

    def root(self, name):
        return f"s3://{self.s3.bucket}/{self.prefix}/{name}" if self.s3 else name

    def flags(self, source):
        return ["--dataset", "synthetic", "--source-dir", str(source), "--local-dirs", "[]", "--mirrors", "[]",
                "--data-dir", self.root("data"), "--artifacts-dir", self.root("artifacts"), *RUN]

    def run(self, source, *extra, tool="luigi"):
        args = (["--module", "pipeline.tasks", "EvaluateNetwork", "--local-scheduler"] if tool == "luigi"
                else ["status"]) + self.flags(source) + list(extra)
        return run(args, self.workdir, tool="luigi" if tool == "luigi" else "cli", env=self.env)

    def keys(self):
        if not self.s3:
            return sorted(p.relative_to(self.workdir).as_posix() for p in self.workdir.rglob("*")
                          if p.is_file() and p.parts[len(self.workdir.parts)] in ("data", "artifacts"))
        found = self.client.list_objects_v2(Bucket=self.s3.bucket, Prefix=self.prefix + "/").get("Contents", [])
        return sorted(entry["Key"][len(self.prefix) + 1:] for entry in found)

    def read(self, key):
        if not self.s3:
            return (self.workdir / key).read_bytes()
        return self.client.get_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{key}")["Body"].read()

    def write(self, key, data):
        """Replace the bytes at key; on a bucket the object keeps the metadata it had (a forger's
        copy of x-amz-meta-sha256 included)."""
        if not self.s3:
            (self.workdir / key).write_bytes(data)
            return
        client = self.client
        metadata = client.head_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{key}").get("Metadata", {})
        client.put_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{key}", Body=data, Metadata=metadata)

    def delete(self, key):
        if not self.s3:
            (self.workdir / key).unlink()
        else:
            self.client.delete_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{key}")

    def copy_to(self, other):
        """Everything of this store into `other` (a fresh workspace or prefix)."""
        for key in self.keys():
            if self.s3:
                self.client.copy_object(Bucket=self.s3.bucket, Key=f"{other.prefix}/{key}",
                                             CopySource={"Bucket": self.s3.bucket, "Key": f"{self.prefix}/{key}"})
            else:
                (other.workdir / key).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.workdir / key, other.workdir / key)

    def outputs(self):
        """What the chain made, in a form two undisturbed runs agree on exactly."""
        with h5py.File(io.BytesIO(self.read(f"{RUN_DIR}/model.h5")), "r") as f:
            weights = {name: f["params"][name][()].tobytes() for name in ("W1", "b1", "W2", "b2")}
            losses, evaluation = f["losses"][()].tobytes(), f["evaluation"][()].tobytes()
        report = without_times(json.loads(self.read(f"{RUN_DIR}/report/report.json")))
        rows = self.read("artifacts/runs.csv").decode().splitlines()
        return {"weights": weights, "losses": losses, "evaluation": evaluation, "report": report,
                "runs": [",".join(row.split(",")[:13]) for row in rows],
                "checkpoints": [k for k in self.keys() if "/checkpoints/" in k],
                "metrics": self.read(f"{RUN_DIR}/report/metrics.json")}


@pytest.fixture(scope="module")
def s3server():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module", params=["local", "s3"])
def finished(request, tmp_path_factory, synthetic_source):
    """A finished chain on the backend, kept aside; each test works on a copy."""
    s3 = request.getfixturevalue("s3server") if request.param == "s3" else None
    store = Store(request.param, workspace(tmp_path_factory.mktemp(request.param)), s3, f"done-{uuid.uuid4().hex[:8]}")
    done = store.run(synthetic_source)
    assert done.returncode == 0, done.stderr[-3000:]
    return store, store.outputs()


@pytest.fixture
def store(finished, tmp_path):
    original, undisturbed = finished
    copy = Store(original.backend, workspace(tmp_path / "w"), original.s3, f"t-{uuid.uuid4().hex[:8]}")
    original.copy_to(copy)
    return copy, undisturbed


def _edit_h5(store, key, name, change):
    local = store.workdir / "edit.h5"
    local.write_bytes(store.read(key))
    with h5py.File(local, "r+") as f:
        f[name][...] = change(f[name][()])
    store.write(key, local.read_bytes())


def _flip_one_bit_of_w1(store, key):
    def flip(w):
        w = w.copy()
        w.view(np.uint32)[0, 0] ^= 1 << 30
        return w
    _edit_h5(store, key, "params/W1", flip)


def _flip_last_byte(data):
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _edit_json(store, key, change):
    value = json.loads(store.read(key))
    change(value)
    store.write(key, json.dumps(value).encode())


TAMPERING = {
    "one bit of the last checkpoint": (lambda s: _flip_one_bit_of_w1(s, f"{RUN_DIR}/checkpoints/iter-00000060.h5"),
                                       "iter-00000060.h5 or later: its bytes are changed or damaged since it was saved"),
    "a middle checkpoint cut short": (lambda s: s.write(f"{RUN_DIR}/checkpoints/iter-00000024.h5",
                                                        s.read(f"{RUN_DIR}/checkpoints/iter-00000024.h5")[:3000]),
                                      "iter-00000024.h5 or later: its bytes are changed or damaged since it was saved"),
    "a checkpoint's record gone, and model.h5": (lambda s: (s.delete(f"{RUN_DIR}/lineage/checkpoints/iter-00000036.json"),
                                                            s.delete(f"{RUN_DIR}/model.h5")),
                                                 "iter-00000036.h5 or later: it has no record of its own"),
    "model.h5's weights": (lambda s: _edit_h5(s, f"{RUN_DIR}/model.h5", "params/W1", lambda a: a * 2), None),
    "metrics.json, its metadata kept": (lambda s: _edit_json(s, f"{RUN_DIR}/report/metrics.json",
                                                             lambda m: m["final"].update(test_accuracy=9.125)), None),
    "report.json": (lambda s: _edit_json(s, f"{RUN_DIR}/report/report.json",
                                         lambda m: m["final"].update(test_accuracy=0.99)), None),
    "gradient_check.json": (lambda s: _edit_json(s, f"{RUN_DIR}/gradient_check.json",
                                                 lambda g: g.update(passed=False)), None),
    "images.h5": (lambda s: _edit_h5(s, "data/processed/synthetic/images.h5", "train", lambda a: a * 0 + 0.5), None),
    "a raw file": (lambda s: s.write("data/raw/synthetic/t10k-labels-idx1-ubyte.gz", _flip_last_byte(
        s.read("data/raw/synthetic/t10k-labels-idx1-ubyte.gz"))), None),
    "the run's row of runs.csv": (lambda s: s.write("artifacts/runs.csv", s.read("artifacts/runs.csv").replace(
        b",1.0,1.0,", b",1.0,0.5,")), None),
    "runs.csv without the run's row": (lambda s: s.write("artifacts/runs.csv",
                                                         s.read("artifacts/runs.csv").splitlines(True)[0]), None),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_tampered_file_is_stale_and_the_rerun_ends_as_an_undisturbed_run(case, store, synthetic_source):
    store, undisturbed = store
    tamper, logged = TAMPERING[case]
    tamper(store)
    status = store.run(synthetic_source, tool="status")
    assert status.returncode == 3 and "stale" in status.stdout, status.stdout + status.stderr
    rerun = store.run(synthetic_source)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    if logged:
        assert logged in rerun.stderr, rerun.stderr[-3000:]
    assert store.outputs() == undisturbed
    status = store.run(synthetic_source, tool="status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_malformed_row_of_the_runs_index_never_fails_a_run(store, synthetic_source):
    store, undisturbed = store
    store.write("artifacts/runs.csv", store.read("artifacts/runs.csv") + b"../../etc,\n,x,\n\xff\xfe,oops\n")
    assert store.run(synthetic_source, tool="status").returncode == 0  # the run's own row is intact
    other = store.run(synthetic_source, "--seed", "5")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "not a run's row; skipped" in other.stderr
    rows = store.read("artifacts/runs.csv").decode().splitlines()
    assert len(rows) == 3 and [r.split(",")[0] for r in rows[1:]] == ["h30-b50-lr0.5-s4-a297d990",
                                                                      rows[2].split(",")[0]]
    assert rows[2].startswith("h30-b50-lr0.5-s5-")
    page = store.read("artifacts/index.html").decode()
    assert "h30-b50-lr0.5-s4-a297d990" in page and rows[2].split(",")[0] in page
    assert store.outputs()["weights"] == undisturbed["weights"]


def test_custom_data_changed_in_place_makes_the_chain_stale(store, synthetic_source, tmp_path):
    store, undisturbed = store
    source = tmp_path / "source"
    shutil.copytree(synthetic_source, source)
    link = tmp_path / "link"
    link.symlink_to(source)
    assert "another source than --source-dir" in store.run(link, tool="status").stdout
    again = store.run(link)  # the same bytes from elsewhere: fetched again, nothing downstream retrained
    assert again.returncode == 0 and "training from iteration 0" not in again.stderr, again.stderr[-3000:]
    # the same directory spelled another way (its real path, relative or absolute) is the same source
    for spelling in (source, Path(os.path.relpath(source, store.workdir))):
        status = store.run(spelling, tool="status")
        assert status.returncode == 0, status.stdout
    make_idx_dataset(source, n_train=600, n_test=200, seed=31)  # new bytes under the same names
    status = store.run(link, tool="status")
    assert status.returncode == 3 and f"source changed: {source}/" in status.stdout, status.stdout
    rerun = store.run(link)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert store.outputs()["weights"] != undisturbed["weights"]
    manifest = json.loads(store.read("data/raw/synthetic/MANIFEST.json"))
    assert manifest["files"]["train-images-idx3-ubyte.gz"]["sha256"] == \
        hashlib.sha256((source / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    assert store.run(source, tool="status").returncode == 0
