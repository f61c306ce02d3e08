"""Does `mnist-pipeline predict` on pictures agree with predict on the IDX file they came from?

For real Fashion-MNIST (needs /usr/share/datasets/fashion-mnist/) and for MNIST-like digits
drawn here from the system's fonts and framed as MNIST's were: train a model (numpy, a few
seconds), save it as model.h5 with its framing, save the first N test images as pictures, run
`mnist-pipeline predict` on the IDX file and on the pictures, and print the agreement:
    plain     each 28x28 image as a PNG, as it is in the IDX file
    inverted  dark on light, on a 60x60 light canvas, placed off-centre
Also: peak memory of refusing a 144-megapixel PNG, and of a gzip IDX announcing 1.36 M images.

    .venv/bin/python bench/predict_pictures.py [N]
"""

import glob
import gzip
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.checkpoint import save_checkpoint
from pipeline.idx import read_idx, write_idx
from pipeline.network import TwoLayerNet
from pipeline.picture import frame
from pipeline.training import train

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLI = [sys.executable, "-m", "pipeline"]


def train_model(x, labels, path, dataset, framing, iterations=6000):
    net = TwoLayerNet(784, 100, 10, rng=np.random.default_rng(0))
    x = (x.reshape(len(x), -1) / 255).astype(np.float32)
    losses = train(net, x, labels.astype(np.intp), batch_size=100, learning_rate=0.5, iterations=iterations,
                   sampling="shuffle", rng=np.random.default_rng(1))
    save_checkpoint(path, params=net.params, iteration=iterations, epoch=iterations * 100 / len(x),
                    losses=losses, rng_state={}, hyperparameters={}, dataset=dataset, data_checksums={},
                    run_id="bench", inputs={})
    with h5py.File(path, "a") as f:
        f.attrs["framing"] = framing  # as TrainNetwork stores it


def digits(n, seed):
    """n MNIST-like digits (uint8 (n, 28, 28), labels): a digit of a random font, size, slant
    and stroke drawn large, then framed as MNIST's were (20-pixel box, centred by mass)."""
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True))
    fonts = [f for f in fonts if "Mono" not in f or "Bold" in f][:24] or [None]
    rng = np.random.default_rng(seed)
    images, labels = np.zeros((n, 28, 28), np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    for k in range(n):
        font_path = fonts[rng.integers(len(fonts))]
        font = ImageFont.truetype(font_path, int(rng.integers(90, 140))) if font_path else ImageFont.load_default()
        canvas = Image.new("L", (200, 200), 0)
        ImageDraw.Draw(canvas).text((40, 10), str(labels[k]), fill=255, font=font,
                                    stroke_width=int(rng.integers(0, 6)), stroke_fill=255)
        canvas = canvas.rotate(float(rng.normal(0, 8)), resample=Image.Resampling.BILINEAR)
        gray = np.asarray(canvas, np.float64) / 255
        images[k] = np.rint(frame(gray, 0.0, "mnist") * 255).astype(np.uint8)
    return images, labels


def predicted(lines):
    return [line.split("\t")[1] for line in lines.splitlines()]


def agreement(name, images, labels, model, workdir, n):
    workdir.mkdir()
    idx, idx_labels = workdir / "images-idx3-ubyte.gz", workdir / "labels-idx1-ubyte.gz"
    write_idx(idx, images[:n])
    write_idx(idx_labels, labels[:n])
    by_idx = subprocess.run([*CLI, "predict", str(model), str(idx), str(idx_labels)], capture_output=True, text=True,
                            check=True)
    print(f"{name:14s} IDX       {n} images: {by_idx.stderr.splitlines()[-1]}")
    rng = np.random.default_rng(5)
    figures = {}
    for variant in ("plain", "inverted"):
        paths = []
        for k, image in enumerate(images[:n]):
            if variant == "plain":
                picture = Image.fromarray(image)
            else:
                picture = Image.new("L", (60, 60), 255)
                picture.paste(Image.fromarray(255 - image), tuple(int(v) for v in rng.integers(0, 33, 2)))
            paths.append(workdir / f"{variant}-{k:04d}.png")
            picture.save(paths[-1])
        by_picture = subprocess.run([*CLI, "predict", str(model), *map(str, paths)], capture_output=True,
                                    text=True, check=True)
        same = np.mean(np.array(predicted(by_picture.stdout)) == np.array(predicted(by_idx.stdout)))
        figures[variant] = same
        print(f"{name:14s} {variant:9s} {n} pictures: agree with the IDX predictions {same:.4f}", flush=True)
    return figures


def peak_mb(code):
    """(peak resident memory in MB of a fresh interpreter running code (VmHWM: ru_maxrss would
    carry this process's over the exec), what it printed)."""
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint([l.split()[1] for l in "
                           "open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)"],
                          capture_output=True, text=True)
    return int(done.stderr.strip().splitlines()[-1]) // 1024, done.stdout.strip()


def huge_png(path, width=12000, height=12000):
    """A valid 144-megapixel grayscale PNG, all black, about 140 KB: written row by row."""
    compressor, row = zlib.compressobj(9), b"\0" + bytes(width)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def main(n=500):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if FASHION.is_dir():
            train_images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
            train_labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
            test_images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
            test_labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
            train_model(train_images, train_labels, folder / "fashion.h5", "fashion-mnist", "fill")
            agreement("fashion-mnist", test_images, test_labels, folder / "fashion.h5", folder / "fashion", n)
        train_digits, train_labels = digits(6000, seed=0)
        test_digits, test_digit_labels = digits(n, seed=1)
        train_model(train_digits, train_labels, folder / "digits.h5", "digits", "mnist", iterations=3000)
        agreement("digits", test_digits, test_digit_labels, folder / "digits.h5", folder / "digits", n)

        huge_png(folder / "huge.png")
        size = (folder / "huge.png").stat().st_size
        base, _ = peak_mb("import pipeline.predict, PIL.Image, PIL.PngImagePlugin")
        peak, said = peak_mb(f"from pipeline.picture import load_picture\ntry:\n load_picture("
                             f"{str(folder / 'huge.png')!r})\nexcept Exception as e:\n print(e)")
        print(f"144-megapixel PNG of {size} bytes: {said}\n  peak {peak} MB (the interpreter with the modules "
              f"imported: {base} MB)")
        bomb = folder / "bomb-idx3-ubyte.gz"
        with gzip.open(bomb, "wb", compresslevel=9) as f:
            f.write(struct.pack(">HBBIII", 0, 8, 3, 1_360_000, 28, 28))
            for _ in range(1360):
                f.write(bytes(1000 * 784))
        started = time.perf_counter()
        peak, said = peak_mb(f"from pipeline.predict import predict\nimport io\nfrom pathlib import Path\n"
                             f"err = io.StringIO()\nprint(predict(Path({str(folder / 'digits.h5')!r}), "
                             f"[{str(bomb)!r}], summary=True, err=err), err.getvalue().splitlines()[0][:40])")
        print(f"gzip IDX of {bomb.stat().st_size} bytes announcing 1,360,000 images (1.07 GB of content): streamed "
              f"in {time.perf_counter() - started:.1f} s (exit code, first line: {said}), peak {peak} MB")

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
