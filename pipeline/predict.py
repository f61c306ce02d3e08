"""`mnist-pipeline predict`: a trained model's labels for an IDX images file or for pictures.

    predict(Path("artifacts/.../model.h5"), ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    predict(Path("artifacts/fashion-mnist/h50-..."), ["shoe.jpg", "shirt.png"], fmt="csv")

One line on `out` per image: what it is (an IDX file's 0-based index, or a picture's file name),
the label, its class name and its probability. fmt "text": tab-separated; "csv": with a header
row; "json": one JSON object a line. In text and csv, a name's backslashes, control characters
and undecodable bytes are escaped (\\\\, \\t, \\n, \\xNN), so that each line is one image; json
keeps the name as a JSON string. Counts (and, given labels, the accuracy) and one line per input
that could not be read go to `err`; the others are still predicted.

Exit codes, as the README's table has them: 0 all predicted, 20 an input or the model is missing,
30 bad data (a picture, IDX file or model that is damaged, foreign, empty or too large), 2 a
bad argument. An IDX file is read in batches: memory does not grow with its length.
"""

import csv
import json
import math
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from pipeline import checkpoint, lineage
from pipeline.errors import CheckpointError, DataError, PipelineError
from pipeline.network import TwoLayerNet
from pipeline.picture import FRAMINGS, default_framing, load_picture
from pipeline.report import class_names

EXIT_USAGE, EXIT_MISSING, EXIT_BAD_DATA = 2, 20, 30
FORMATS = ("text", "csv", "json")
BATCH_VALUES = 1 << 22  # rows of a batch times the model's widest layer: about 16 MB of float32 activations
MAX_BATCH = 4096
_IN_PIECE, _OUT_PIECE = 1 << 16, 1 << 20  # gzip bytes fed, decompressed bytes taken, per step


class _Missing(PipelineError):
    """An input or the model does not exist (exit code 20)."""


class _Usage(PipelineError):
    """The arguments do not make sense together (exit code 2)."""


def predict(model_file: Path, inputs: list, *, fmt="text", summary=False, labels=None, framing=None,
            out=None, err=None) -> int:
    """Print the predictions of the model in model_file (a checkpoint or model .h5, or a run
    directory: its model.h5, only while the run's lineage vouches for it) for `inputs`: one IDX
    images file (labels: its IDX labels file, or as the second input), or pictures. framing:
    None reads the model's `framing` attribute, else its dataset's default. summary: counts only.
    Returns the exit code; every problem is one line on err, never a traceback."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        if fmt not in FORMATS:
            raise _Usage(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        if framing is not None and framing not in FRAMINGS:
            raise _Usage(f"unknown framing {framing!r}: use one of {', '.join(FRAMINGS)}")
        if not inputs:
            raise _Usage("give an IDX images file or pictures to predict")
        network, dataset, model_framing = load_model(Path(model_file))
        names = class_names(dataset, network.params["b2"].size)
        writer = _Writer(fmt, out, names, summary)
        if _is_idx(inputs[0]):
            if len(inputs) > 2 or (len(inputs) == 2 and labels is not None):
                raise _Usage("give one IDX images file and at most one IDX labels file")
            return _predict_idx(network, inputs[0], labels if len(inputs) == 1 else inputs[1], writer, err)
        if labels is not None:
            raise _Usage("labels go with an IDX images file, not with pictures")
        return _predict_pictures(network, inputs, framing or model_framing, writer, err)
    except (PipelineError, ValueError) as error:
        _error(err, str(error))
        return _code(error)
    except BrokenPipeError:  # the reader stopped reading (`| head`): nothing is wrong with the inputs
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _code(error):
    if isinstance(error, _Usage):
        return EXIT_USAGE
    return EXIT_MISSING if isinstance(error, _Missing) else EXIT_BAD_DATA


def load_model(path):
    """(TwoLayerNet, dataset, framing) of a model file or run directory; _Missing or
    CheckpointError (one line) for anything missing, damaged or foreign."""
    if path.is_dir():
        problem = lineage.problem(str(path / "lineage" / "TrainNetwork.json"), inputs=None)
        if problem:
            raise CheckpointError(f"{path / 'model.h5'} is not the run's trained model ({problem}): rerun the "
                                  f"run's command to train it")
        best = path / "best.h5"  # with a validation split: the checkpoint of the best validation accuracy
        path = best if best.is_file() else path / "model.h5"
    if not os.path.lexists(path):
        raise _Missing(f"{path}: no such model file; give a model.h5 or a run directory")
    loaded = checkpoint.load_checkpoint(path)
    if path.name == "best.h5":
        print(f"using {path}: the best validation accuracy, epoch {loaded.epoch:g}", file=sys.stderr)
    framing = loaded.attrs.get("framing") or default_framing(loaded.dataset)
    if not isinstance(framing, str) or framing not in FRAMINGS:
        raise CheckpointError(f"{path}: framing {framing!r} is not one of {', '.join(FRAMINGS)}: not a model of "
                              f"this pipeline")
    return TwoLayerNet.from_params(loaded.params), loaded.dataset, framing


# --- pictures ---

def _predict_pictures(network, paths, framing, writer, err):
    """Each picture framed and predicted; a picture that cannot be read is one line on err."""
    codes, dtype = [], network.params["W1"].dtype
    if network.params["W1"].shape[0] != 784:
        raise DataError(f"the model takes inputs of {network.params['W1'].shape[0]} values; pictures make 784 "
                        f"(28x28): give an IDX file of the model's image size")
    batch = _batch_rows(network)
    pending = []

    def flush():
        x = np.stack([pixels for _, pixels in pending]).astype(dtype)
        writer.rows([name for name, _ in pending], network.predict(x))
        pending.clear()

    for path in paths:
        try:
            if not os.path.lexists(path):
                raise _Missing(f"{path}: no such file")
            pending.append((path, load_picture(path, framing=framing)))
        except PipelineError as error:
            _error(err, str(error))
            codes.append(_code(error))
            continue
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    writer.close()
    refused = f"; {len(codes)} refused" if codes else ""
    print(f"predicted {writer.count} of {len(paths)} pictures{refused}; per class: {writer.counts.tolist()}",
          file=err)
    return max(codes, default=0)


# --- IDX ---

def _predict_idx(network, images_path, labels_path, writer, err):
    images = IdxStream(images_path)
    if len(images.shape) != 3:
        raise DataError(f"{images_path} holds labels, not images: give the images file first")
    if images.shape[0] == 0:
        raise DataError(f"{images_path} holds 0 images: nothing to predict; give a file with images")
    size = images.shape[1] * images.shape[2]
    if size != network.params["W1"].shape[0]:
        raise DataError(f"{images_path} has images of {size} pixels; the model takes {network.params['W1'].shape[0]}")
    labels = None
    if labels_path is not None:
        labels = IdxStream(labels_path)
        if len(labels.shape) != 1:
            raise DataError(f"{labels_path} holds images, not labels: give a labels file last")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{labels_path} holds {labels.shape[0]} labels for {images.shape[0]} images")
        labels.check(n_classes=network.params["b2"].size)
    images.check()
    batch, dtype, correct, first = _batch_rows(network), network.params["W1"].dtype, 0, 0
    label_batches = labels.batches(batch) if labels else None
    for pixels in images.batches(batch):
        x = pixels.reshape(len(pixels), -1).astype(dtype)
        x /= dtype.type(255)  # as processed.normalize_images: uint8 / 255 in the model's dtype
        probabilities = network.predict(x)
        writer.rows(range(first, first + len(x)), probabilities)
        if label_batches is not None:
            correct += int(np.count_nonzero(probabilities.argmax(axis=1) == next(label_batches)))
        first += len(x)
    writer.close()
    print(f"predicted {writer.count} images; per class: {writer.counts.tolist()}", file=err)
    if labels is not None:
        print(f"accuracy {correct / first:.4f} ({correct}/{first})", file=err)
    return 0


def _batch_rows(network):
    widest = max(network.params["W1"].shape + network.params["W2"].shape)
    return max(1, min(MAX_BATCH, BATCH_VALUES // widest))


def _is_idx(path):
    """Whether the file starts as an IDX file does (or as gzip); False when it cannot be read
    (it is then reported as a picture that cannot be read)."""
    try:
        if not os.path.isfile(path):  # a FIFO would block the open
            return False
        with open(path, "rb", buffering=0) as f:
            head = f.read(3)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head == b"\x00\x00\x08"


class IdxStream:
    """An IDX file (gzip or plain) read a batch of entries at a time, in bounded memory.

    shape: from the header; check() reads it through once (gzip) or stats it (plain) and
    raises DataError unless its length is what the header announces (and, for labels, every
    label is below n_classes); batches(rows) then yields uint8 arrays (k, *shape[1:])."""

    def __init__(self, path):
        self.path = path
        if not os.path.lexists(path):
            raise _Missing(f"{path}: no such file")
        with self._open() as stream:
            head = stream.read(4)
            if len(head) < 4 or head[:3] not in (b"\x00\x00\x08",) or head[3] not in (1, 3):
                magic = head.hex() if len(head) == 4 else f"{len(head)} bytes"
                raise DataError(f"{path}: not an MNIST-style IDX file (it starts {magic}, not 00000801 or "
                                f"00000803)")
            sizes = stream.read(4 * head[3])
            if len(sizes) < 4 * head[3]:
                raise DataError(f"{path}: IDX header cut short")
        self.shape = struct.unpack(f">{head[3]}I", sizes)
        self.header = 4 + 4 * head[3]
        self.length = self.header + math.prod(self.shape)

    def _open(self):
        try:
            return _Reader(self.path)
        except OSError as error:
            raise DataError(f"{self.path}: cannot read ({error.strerror})") from None

    def check(self, n_classes=None):
        size = 0
        with self._open() as stream:
            if not stream.compressed and n_classes is None:
                size = stream.size
            else:
                while piece := stream.read(_OUT_PIECE):
                    if n_classes is not None and size + len(piece) > self.header:
                        body = np.frombuffer(piece, np.uint8)[max(0, self.header - size):]
                        if body.size and int(body.max()) >= n_classes:
                            raise DataError(f"{self.path}: label {int(body.max())} is out of range 0-{n_classes - 1}")
                    size += len(piece)
                    if size > self.length:
                        break
        if size != self.length:
            problem = "short" if size < self.length else "longer than its header says"
            raise DataError(f"{self.path}: file is {problem}: the header {self.shape} needs {self.length} bytes")

    def batches(self, rows):
        row_bytes = math.prod(self.shape[1:])
        with self._open() as stream:
            stream.read(self.header)
            for first in range(0, self.shape[0], rows):
                count = min(rows, self.shape[0] - first)
                data = stream.read(count * row_bytes)
                if len(data) < count * row_bytes:
                    raise DataError(f"{self.path}: file is short")
                yield np.frombuffer(data, np.uint8).reshape(count, *self.shape[1:])


class _Reader:
    """read(n) of a file's bytes, decompressed when it is gzip (several members too), holding
    at most a MiB of decompressed data beyond what is asked for; DataError when corrupt."""

    def __init__(self, path):
        self.file = open(path, "rb")
        self.size = os.fstat(self.file.fileno()).st_size
        self.compressed = self.file.read(2) == b"\x1f\x8b"
        self.file.seek(0)
        self.pieces = self._inflate() if self.compressed else None
        self.rest = memoryview(b"")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def read(self, n):
        if not self.compressed:
            return self.file.read(n)
        chunks, size = [], 0
        while size < n:
            if not self.rest:
                self.rest = memoryview(next(self.pieces, b""))
                if not self.rest:
                    break
            chunks.append(self.rest[:n - size])
            self.rest = self.rest[len(chunks[-1]):]
            size += len(chunks[-1])
        return b"".join(chunks)

    def _inflate(self):
        data = self.file.read(_IN_PIECE)
        try:
            while data:
                member = zlib.decompressobj(wbits=31)
                while not member.eof:
                    if not data:
                        data = self.file.read(_IN_PIECE)
                        if not data:
                            raise EOFError("compressed data ended before the end-of-stream marker")
                    piece = member.decompress(data, _OUT_PIECE)
                    data = member.unconsumed_tail
                    if piece:
                        yield piece
                data = member.unused_data + data or self.file.read(_IN_PIECE)
        except (zlib.error, EOFError) as error:
            raise DataError(f"{self.file.name}: corrupt or truncated gzip data ({error})") from None


# --- output ---

class _Writer:
    """Prediction rows in one of FORMATS, and the per-class counts."""

    def __init__(self, fmt, out, names, summary):
        self.fmt, self.out, self.names, self.summary = fmt, out, names, summary
        self.counts, self.count = np.zeros(len(names), dtype=np.int64), 0
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None

    def rows(self, inputs, probabilities):
        predicted = probabilities.argmax(axis=1)
        self.counts += np.bincount(predicted, minlength=len(self.names))
        self.count += len(predicted)
        if self.summary:
            return
        if self.csv and self.count == len(predicted):  # the header, above the first row
            self.csv.writerow(["input", "label", "class", "probability"])
        lines = []
        for item, label, row in zip(inputs, predicted.tolist(), probabilities):
            probability, name = f"{row[label]:.4f}", self.names[label]
            if self.fmt == "json":
                lines.append(json.dumps({"input": item if isinstance(item, int) else str(item), "label": label,
                                         "class": name, "probability": float(probability)}) + "\n")
            elif self.fmt == "csv":
                self.csv.writerow([escape(str(item)), label, name, probability])
            else:
                lines.append(f"{escape(str(item))}\t{label}\t{escape(name)}\t{probability}\n")
        self.out.write("".join(lines))

    def close(self):
        self.out.flush()


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text):
    """text on one line: backslash, tab, newline and carriage return as \\\\ \\t \\n \\r, other
    control characters and undecodable bytes (surrogate escapes of os.fsdecode) as \\xNN."""
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20 or 0x7f <= code < 0xa0 or code in (0x2028, 0x2029):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        elif 0xdc80 <= code <= 0xdcff:
            out.append(f"\\x{code - 0xdc00:02x}")
        elif 0xd800 <= code <= 0xdfff:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _error(err, message):
    print(f"mnist-pipeline: error: {escape(message)}", file=err)
