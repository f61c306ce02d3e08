"""mnist-pipeline predict: every line names its class, bad inputs are one line each, memory is bounded."""

import csv
import gzip
import io
import json
import os
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from fakedata import FILES, learnable, make_idx_dataset
from pipeline.checkpoint import save_checkpoint
from pipeline.cli import main
from pipeline.idx import read_idx, write_idx
from pipeline.network import TwoLayerNet
from pipeline.predict import IdxStream, escape, predict
from pipeline.report import CLASS_NAMES
from pipeline.training import train
from test_picture import figure_field, huge_png_header

FASHION = CLASS_NAMES["fashion-mnist"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained model of 'fashion-mnist' (generated data: the names are what matter) and an IDX pair."""
    folder = tmp_path_factory.mktemp("predict")
    x, t = learnable(600)
    net = TwoLayerNet(784, 30, 10, rng=np.random.default_rng(0))
    losses = train(net, x, t, batch_size=50, learning_rate=0.5, iterations=120, sampling="shuffle",
                   rng=np.random.default_rng(1))
    save_checkpoint(folder / "model.h5", params=net.params, iteration=120, epoch=10.0, losses=losses, rng_state={},
                    hyperparameters={}, dataset="fashion-mnist", data_checksums={}, run_id="test", inputs={})
    make_idx_dataset(folder / "data", n_train=10, n_test=200)
    return folder, net


def run(args, tmp_path=None):
    """(exit code, stdout, stderr) of predict through the command line, in this process."""
    out, err = io.StringIO(), io.StringIO()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(["predict", *map(str, args)])
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    return code, out.getvalue(), err.getvalue()


def test_idx_lines_give_index_label_class_and_probability_as_the_network_computes_them(setup):
    folder, net = setup
    images, labels = folder / "data" / FILES["test_images"], folder / "data" / FILES["test_labels"]
    code, out, err = run([folder / "model.h5", images, labels])
    assert code == 0, err
    expected = net.predict(read_idx(images).reshape(200, -1).astype(np.float32) / np.float32(255))
    lines = [line.split("\t") for line in out.splitlines()]
    assert [int(line[0]) for line in lines] == list(range(200))
    assert [int(line[1]) for line in lines] == expected.argmax(axis=1).tolist()
    assert [line[2] for line in lines] == [FASHION[k] for k in expected.argmax(axis=1)]
    np.testing.assert_allclose([float(line[3]) for line in lines], expected.max(axis=1), atol=5e-5)
    correct = int((expected.argmax(axis=1) == read_idx(labels)).sum())
    assert f"accuracy {correct / 200:.4f} ({correct}/200)" in err and correct >= 180


def test_idx_read_in_batches_of_any_size_gives_the_same_lines(setup, monkeypatch):
    folder, _ = setup
    images = folder / "data" / FILES["test_images"]
    whole = run([folder / "model.h5", images])[1]
    monkeypatch.setattr("pipeline.predict.MAX_BATCH", 7)
    assert run([folder / "model.h5", images])[1] == whole
    plain = folder / "plain-idx3-ubyte"
    write_idx(plain, read_idx(images), compress=False)
    assert run([folder / "model.h5", plain])[1] == whole


def test_gzip_members_are_streamed_one_after_another(tmp_path):
    content = struct.pack(">HBBIII", 0, 8, 3, 5, 2, 2) + bytes(range(20))
    path = tmp_path / "two-members.gz"
    path.write_bytes(gzip.compress(content[:9]) + gzip.compress(content[9:]))
    stream = IdxStream(path)
    stream.check()
    assert stream.shape == (5, 2, 2)
    assert [b.tolist() for b in stream.batches(3)] == [np.arange(12).reshape(3, 2, 2).tolist(),
                                                     np.arange(12, 20).reshape(2, 2, 2).tolist()]


def test_csv_and_json_carry_the_same_predictions_and_names_survive_tabs_and_newlines(setup, tmp_path):
    folder, _ = setup
    paths = []
    for k, name in enumerate(["plain.png", "tab\there.png", "new\nline.png", "back\\slash.png"]):
        paths.append(tmp_path / name)
        Image.fromarray(figure_field("fill", k)).save(paths[-1])
    code, text, _ = run([folder / "model.h5", *paths])
    assert code == 0
    lines = [line.split("\t") for line in text.splitlines()]
    assert [line[0] for line in lines] == [escape(str(p)) for p in paths]
    assert "tab\\there.png" in lines[1][0] and "new\\nline.png" in lines[2][0] and "back\\\\slash" in lines[3][0]
    assert all(len(line) == 4 for line in lines)
    code, as_csv, _ = run(["--format", "csv", folder / "model.h5", *paths])
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [[r["input"], r["label"], r["class"], r["probability"]] for r in rows] == lines
    code, as_json, _ = run(["--format", "json", folder / "model.h5", *paths])
    records = [json.loads(line) for line in as_json.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in paths]  # JSON keeps the name itself
    assert [[str(r["label"]), r["class"], f"{r['probability']:.4f}"] for r in records] == [line[1:] for line in lines]


def test_an_undecodable_file_name_is_escaped_byte_by_byte():
    assert escape(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert escape("a\x1bb\rc") == "a\\x1bb\\rc"


def test_the_models_framing_attribute_decides_and_a_flag_overrides_it(setup, tmp_path):
    folder, _ = setup
    path = tmp_path / "digit.png"
    Image.fromarray(figure_field("mnist", 3)).save(path)
    model = tmp_path / "model.h5"
    model.write_bytes((folder / "model.h5").read_bytes())
    default = run([model, path])[1]  # fashion-mnist: fill, which reframes an mnist-framed picture
    with h5py.File(model, "a") as f:
        f.attrs["framing"] = "mnist"
    by_attribute = run([model, path])[1]
    assert run(["--framing", "fill", model, path])[1] == default
    assert run([folder / "model.h5", "--framing", "mnist", path])[1] == by_attribute
    from pipeline.picture import load_picture
    net = TwoLayerNet.from_params({k: h5py.File(model, "r")["params"][k][()] for k in ("W1", "b1", "W2", "b2")})
    for framing, out in (("fill", default), ("mnist", by_attribute)):
        assert int(out.split("\t")[1]) == int(net.predict(load_picture(path, framing=framing)[None]).argmax())


def test_one_bad_picture_is_reported_and_the_others_are_predicted(setup, tmp_path):
    folder, _ = setup
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for k, path in enumerate(good):
        Image.fromarray(figure_field("fill", k)).save(path)
    (tmp_path / "b.png").write_text("not a picture")
    code, out, err = run([folder / "model.h5", good[0], tmp_path / "b.png", good[1]])
    assert code == 30
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(p) for p in good]
    assert [line for line in err.splitlines() if "error" in line] == [
        f"mnist-pipeline: error: {tmp_path / 'b.png'}: not an image file that can be read (none of PNG, JPEG, GIF, "
        f"BMP, TIFF, WEBP, PPM); give a picture in one of those formats"]
    assert "predicted 2 of 3 pictures; 1 refused" in err


# --- every bad input: one line on stderr, the README's exit code, no traceback, nothing left behind ---

def _model_with(damage):
    def make(folder, tmp_path):
        model = tmp_path / "bad.h5"
        model.write_bytes((folder / "model.h5").read_bytes())
        with h5py.File(model, "a") as f:
            damage(f, tmp_path, folder)
        return [model, folder / "data" / FILES["test_images"]]
    return make


def _replace(name, **dataset):
    def damage(f, tmp_path, folder):
        del f[name]
        f.create_dataset(name, **dataset)
    return damage


def _set(name, index, value):
    def damage(f, tmp_path, folder):
        data = f[name][()]
        data[index] = value
        f[name][...] = data
    return damage


def _link(name, make_link):
    def damage(f, tmp_path, folder):
        del f[name]
        f[name] = make_link(tmp_path, folder)
    return damage


def _external_storage(f, tmp_path, folder):
    (tmp_path / "outside.bin").write_bytes(bytes(784 * 30 * 4))
    del f["params/W1"]
    f["params"].create_dataset("W1", shape=(784, 30), dtype=np.float32,
                               external=[(str(tmp_path / "outside.bin"), 0, 784 * 30 * 4)])


def _params_soft_link(f, tmp_path, folder):
    f.move("params", "p")
    f["params"] = h5py.SoftLink("/p")


def _huge_sides(f, tmp_path, folder):
    for name, shape in (("W1", (1, 1 << 21)), ("b1", (1 << 21,)), ("W2", (1 << 21, 10))):
        del f[f"params/{name}"]
        f["params"].create_dataset(name, shape=shape, dtype=np.float32, chunks=True)  # nothing stored


def _idx(array, compress=True, name="images-idx3-ubyte.gz"):
    def make(folder, tmp_path):
        path = tmp_path / name
        write_idx(path, array, compress=compress)
        return [folder / "model.h5", path]
    return make


def _file(data, name="x.png", model=True):
    def make(folder, tmp_path):
        path = tmp_path / name
        path.write_bytes(data(folder) if callable(data) else data)
        return [folder / "model.h5", path] if model else [path, folder / "data" / FILES["test_images"]]
    return make


def _bomb_header(folder):
    """A gzip IDX whose header announces 1.36 M images, followed by far fewer."""
    return gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 1_360_000, 28, 28) + bytes(784 * 100))


def _truncated_gzip(folder):
    return (folder / "data" / FILES["test_images"]).read_bytes()[:5000]


def _picture_with(make):
    def build(folder, tmp_path):
        path = tmp_path / "p.png"
        make(path)
        return [folder / "model.h5", path]
    return build


def _png_truncated(path):
    buffer = io.BytesIO()
    Image.fromarray(figure_field("fill", 0)).resize((200, 200)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:-300])


def _with_labels(labels):
    def make(folder, tmp_path):
        write_idx(tmp_path / "labels.gz", labels)
        return [folder / "model.h5", folder / "data" / FILES["test_images"], tmp_path / "labels.gz"]
    return make


BAD = {
    # pictures
    "text file": (_file(b"hello\n"), 30, "not an image file that can be read"),
    "empty file": (_file(b""), 30, "not an image file that can be read"),
    "truncated PNG": (_picture_with(_png_truncated), 30, "damaged"),
    "144-megapixel PNG": (_file(lambda f: huge_png_header(12000, 12000)), 30, "12000x12000 pixels, more than"),
    "file over 64 MiB": (_picture_with(lambda p: os.truncate(p.write_bytes(b"") or p, (64 << 20) + 1)), 30,
                         "bytes, more than the"),
    "directory": (_picture_with(lambda p: p.mkdir()), 30, "not a regular file"),
    "FIFO": (_picture_with(os.mkfifo), 30, "not a regular file"),
    "blank picture": (_picture_with(lambda p: Image.new("L", (40, 40), 255).save(p)), 30, "blank"),
    "missing picture": (lambda folder, tmp_path: [folder / "model.h5", tmp_path / "nope.png"], 20, "no such file"),
    "name with a newline": (lambda folder, tmp_path: [folder / "model.h5", tmp_path / "a\nb.png"], 20,
                            "a\\nb.png: no such file"),
    # IDX
    "IDX of 0 images": (_idx(np.zeros((0, 28, 28), np.uint8)), 30, "holds 0 images: nothing to predict"),
    "plain IDX of 0 images": (_idx(np.zeros((0, 28, 28), np.uint8), compress=False, name="i-idx3-ubyte"), 30,
                              "holds 0 images"),
    "gzip IDX announcing 1.36 M images": (_file(_bomb_header, "bomb.gz"), 30, "file is short"),
    "truncated gzip IDX": (_file(_truncated_gzip, "cut.gz"), 30, "corrupt or truncated gzip data"),
    "images of 10x10 pixels": (_idx(np.zeros((3, 10, 10), np.uint8)), 30, "images of 100 pixels; the model takes 784"),
    "labels given as images": (_idx(np.zeros(3, np.uint8)), 30, "holds labels, not images"),
    "too few labels": (_with_labels(np.zeros(7, np.uint8)), 30, "holds 7 labels for 200 images"),
    "a label out of range": (_with_labels(np.full(200, 12, np.uint8)), 30, "label 12 is out of range 0-9"),
    "three IDX files": (lambda folder, tmp_path: [folder / "model.h5"] + [folder / "data" / FILES["test_images"]] * 3,
                        2, "give one IDX images file and at most one IDX labels file"),
    # models
    "missing model": (lambda folder, tmp_path: [tmp_path / "none.h5", folder / "data" / FILES["test_images"]], 20,
                      "no such model file"),
    "model not HDF5": (_file(b"not hdf5", "m.h5", model=False), 30, "is not a readable HDF5 checkpoint"),
    "W1 of strings": (_model_with(_replace("params/W1", data=np.full((784, 30), b"w"))), 30,
                      "params/W1 holds |S1 values, not float32 or float64"),
    "W1 of ints": (_model_with(_replace("params/W1", data=np.zeros((784, 30), np.int32))), 30,
                   "params/W1 holds int32 values"),
    "NaN in W1": (_model_with(_set("params/W1", (3, 4), np.nan)), 30, "W1 holds NaN or infinite values"),
    "inf in b2": (_model_with(_set("params/b2", 0, np.inf)), 30, "b2 holds NaN or infinite values"),
    "W1 in external storage": (_model_with(_external_storage), 30, "params/W1 keeps its data outside the file"),
    "W1 a soft link": (_model_with(_link("params/W1", lambda t, f: h5py.SoftLink("/params/W2"))), 30,
                       "params/W1 is a soft link"),
    "params a soft link": (_model_with(_params_soft_link), 30, "params is a soft link"),
    "W1 an external link": (_model_with(_link("params/W1", lambda t, f: h5py.ExternalLink(str(f / "model.h5"),
                                                                                           "/params/W1"))),
                            30, "params/W1 is an external link"),
    "shapes that do not chain": (_model_with(_replace("params/W2", data=np.zeros((29, 10), np.float32))), 30,
                                 "shapes W1 (784, 30), b1 (30,), W2 (29, 10), b2 (10,) do not fit together"),
    "huge sides": (_model_with(_huge_sides), 30, "sides past 1,048,576"),
    "bad framing attribute": (_model_with(lambda f, t, d: f.attrs.__setitem__("framing", "zoom")), 30,
                              "framing 'zoom' is not one of mnist, fill"),
    "run directory without lineage": (lambda folder, tmp_path: [tmp_path, folder / "data" / FILES["test_images"]], 30,
                                      "is not the run's trained model (missing)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_input_is_one_line_with_the_documented_exit_code_and_leaves_nothing(setup, tmp_path, case):
    make, code, message = BAD[case]
    args = make(setup[0], tmp_path)
    before = sorted(tmp_path.rglob("*")), sorted(setup[0].rglob("*"))
    got, out, err = run(args)
    errors = [line for line in err.splitlines() if line.startswith("mnist-pipeline: error:")]
    assert got == code, err
    assert len(errors) == 1 and message in errors[0], err
    assert len(err.splitlines()) <= 2 and "Traceback" not in err  # the error, and for pictures the counts
    assert out == ""
    assert (sorted(tmp_path.rglob("*")), sorted(setup[0].rglob("*"))) == before


def test_a_bad_format_is_a_usage_error(setup):
    folder, _ = setup
    assert predict(folder / "model.h5", [folder / "data" / FILES["test_images"]], fmt="xml", err=io.StringIO()) == 2


# --- bounded memory, measured in a fresh process ---

PEAK = ("\nimport sys\nprint([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], "
        "file=sys.stderr)")


def peak_kb(code, cwd):
    done = subprocess.run([sys.executable, "-c", code + PEAK], capture_output=True, text=True, cwd=cwd, timeout=120)
    return int(done.stderr.strip().splitlines()[-1]), done.stdout


def test_a_144_megapixel_png_is_refused_before_it_is_decoded(tmp_path):
    (tmp_path / "huge.png").write_bytes(huge_png_header(12000, 12000))
    base, _ = peak_kb("import pipeline.picture, PIL.Image, PIL.PngImagePlugin, numpy", tmp_path)
    peak, said = peak_kb("from pipeline.picture import load_picture\ntry:\n load_picture('huge.png')\n"
                         "except Exception as e:\n print(e)", tmp_path)
    assert "12000x12000 pixels, more than" in said
    assert peak - base < 20_000  # KB; decoded, it would take 144 MB and more


def test_an_idx_file_is_predicted_in_memory_independent_of_its_length(setup, tmp_path):
    import tracemalloc

    folder, _ = setup
    peaks = []
    for n in (10_000, 50_000):
        path = tmp_path / f"{n}-idx3-ubyte.gz"
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, n, 28, 28))
            for _ in range(n // 1000):
                f.write(bytes(784_000))
        err = io.StringIO()
        tracemalloc.start()
        try:
            assert predict(folder / "model.h5", [path], summary=True, err=err) == 0
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert f"predicted {n} images" in err.getvalue()
    assert peaks[1] < peaks[0] + (1 << 20)  # five times the images (39 MB), not a MB more
    assert peaks[1] < 40 << 20  # read at once, they would take 39 MB as bytes, 157 MB as float32
