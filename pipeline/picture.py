"""An ordinary picture (PNG, JPEG, ...) of one digit or garment, made into what the network reads:
a light figure on a black 28x28 field, framed as the model's dataset was.

Framings (FRAMINGS; default_framing(dataset) picks the dataset's own):
    mnist  MNIST's digits: the figure cropped to its bounding box, scaled with anti-aliasing so
           that its longer side is 20 pixels (aspect ratio kept), placed so that its centre of
           mass sits at the field's centre; full contrast.
    fill   Fashion-MNIST's garments: the figure cropped to what differs from the background by
           5 % of full scale, scaled so that its longer side is 28 pixels, centred by its box
           (the odd pixel to the right/bottom); intensities kept.
A 28x28 picture already in that form (a dataset image saved as a file) is taken as it is.

Each file is checked before it is decoded: a regular file of at most MAX_FILE_BYTES, one of
FORMATS, at most MAX_PIXELS pixels by its header. Every refusal is a one-line DataError.
"""

import math
import os
import stat
import warnings

import numpy as np

from pipeline.errors import DataError

FRAMINGS = ("mnist", "fill")
SIZE = 28  # side of the field
BOX = 20  # mnist: the figure's longer side within it
MIN_CONTRAST = 0.08  # figure and background differ by less than this (of full scale): blank
INK = 0.15  # mnist: after contrast stretching, pixels below this are background when finding the bounding box
EDGE = 2  # mnist: pixels this close to the box, above FILL_INK, widen it
FILL_INK = 0.05  # fill: Fashion-MNIST trimmed what was within 5 % of the background
MAX_FILE_BYTES = 64 << 20
MAX_PIXELS = 40_000_000  # by the header; decoded, such a picture takes at most 160 MB (RGBA)
WORK_SIDE = 2048  # larger pictures are reduced to this longer side before the float arithmetic
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


def default_framing(dataset) -> str:
    """The framing a dataset's images were made with: "fill" for fashion-mnist, else "mnist"."""
    return "fill" if dataset == "fashion-mnist" else "mnist"


def check_framing(framing) -> str:
    """framing itself when it is one of FRAMINGS; DataError otherwise."""
    if framing not in FRAMINGS:
        raise DataError(f"unknown framing {framing!r}: use one of {', '.join(FRAMINGS)}")
    return framing


def load_picture(path, framing="mnist", invert=None) -> np.ndarray:
    """The picture at `path` as the training data has it: float32 (784,), uint8 pixels / 255,
    a light figure on a black background, framed by `framing` (see the module doc).

    invert: None decides from the picture (a mostly light border means a dark figure on a light
    background, which is inverted); True or False forces it. Transparent pixels count as white.
    Raises DataError for a file that is missing, too large, not an image, or blank.
    """
    check_framing(framing)
    gray = _decode(path)
    border = np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])
    if invert is None:
        invert = float(np.median(border)) > 0.5
    if invert:
        gray, border = 1.0 - gray, 1.0 - border
    if gray.shape == (SIZE, SIZE) and is_framed(gray, framing):
        field = gray
    else:
        field = frame(gray, float(np.median(border)), framing, path)
    pixels = np.rint(np.clip(field, 0.0, 1.0) * 255).astype(np.uint8)  # the training data's values
    return pixels.reshape(-1).astype(np.float32) / np.float32(255)


def check_file(path):
    """(open binary file, PIL image with its header read, nothing decoded) for a picture that
    passes the checks before decoding; DataError otherwise. The caller closes both."""
    from PIL import Image, UnidentifiedImageError

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO does not block the open
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DataError(f"{path}: not a regular file; give a picture file")
    file = os.fdopen(fd, "rb")
    try:
        if info.st_size > MAX_FILE_BYTES:
            raise DataError(f"{path}: {info.st_size} bytes, more than the {MAX_FILE_BYTES} a picture may have; "
                            f"reduce it")
        try:
            with warnings.catch_warnings():  # the pixel count is checked below, whatever PIL's limit
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file, formats=FORMATS)  # reads the header only
        except Image.DecompressionBombError:
            raise DataError(f"{path}: more than the {MAX_PIXELS} pixels a picture may have; reduce it") from None
        except UnidentifiedImageError:
            raise DataError(f"{path}: not an image file that can be read (none of {', '.join(FORMATS)}); give "
                            f"a picture in one of those formats") from None
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{path}: not an image file that can be read ({_one_line(error)}); give a picture "
                            f"that opens in an image viewer") from None
        width, height = image.size
        if width * height > MAX_PIXELS:
            image.close()
            raise DataError(f"{path}: {width}x{height} pixels, more than the {MAX_PIXELS} pixels a picture may have; "
                            f"reduce it")
        if width == 0 or height == 0:
            image.close()
            raise DataError(f"{path}: the image is empty (0 pixels)")
        return file, image
    except BaseException:
        file.close()
        raise


def _decode(path):
    """Gray float64 (rows, cols) in [0, 1] of the picture at path, transparency on white, the
    longer side reduced to WORK_SIDE at most."""
    from PIL import Image, ImageOps

    file, image = check_file(path)
    try:
        with file, image:
            image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # JPEG: decoded at a reduced scale where possible
            image = ImageOps.exif_transpose(image)
            image.load()
            if max(image.size) > WORK_SIDE:
                image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
            if image.mode.startswith("I;16"):
                return np.asarray(image, dtype=np.float64) / 65535.0
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
            return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    except DataError:
        raise
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{path}: not an image file that can be read, damaged ({_one_line(error)}); give a "
                        f"picture that opens in an image viewer") from None


def is_framed(field, framing):
    """Whether a (28, 28) light-on-dark field in [0, 1] is already in the framing's form (a
    dataset image saved as a picture), so that framing it again would only blur or shift it."""
    flat = field.reshape(-1)
    if np.mean(flat <= 0.02) < 0.05:  # the datasets' backgrounds are black
        return False
    rows, cols = np.nonzero(field > FILL_INK)
    if rows.size == 0:
        return False
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    if framing == "fill":
        off_centre = max(abs(rows.min() - (SIZE - height) / 2), abs(cols.min() - (SIZE - width) / 2))
        return max(height, width) >= SIZE - 2 and off_centre <= 1
    total = field.sum()
    centre_row = (field.sum(axis=1) * np.arange(SIZE)).sum() / total
    centre_col = (field.sum(axis=0) * np.arange(SIZE)).sum() / total
    centred = abs(centre_row - (SIZE - 1) / 2) <= 1.5 and abs(centre_col - (SIZE - 1) / 2) <= 1.5
    return max(height, width) <= BOX + 2 and centred


def frame(gray, background, framing, name="picture"):
    """(28, 28) float64 in [0, 1]: the light-on-dark gray image, its background level given,
    framed as `framing` says; DataError naming `name` when no figure stands out."""
    peak = float(gray.max())
    if peak - background < MIN_CONTRAST:
        raise DataError(f"{name}: the image is blank (no figure stands out from the background)")
    if framing == "fill":
        figure = np.clip((gray - background) / (1.0 - background), 0.0, 1.0)
        threshold, side = FILL_INK, SIZE
    else:
        figure = np.clip((gray - background) / (peak - background), 0.0, 1.0)
        threshold, side = INK, BOX
    rows, cols = np.nonzero(figure >= threshold)
    if rows.size == 0:
        raise DataError(f"{name}: the image is blank (no figure stands out from the background)")
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if framing == "mnist":  # the faint anti-aliased edge just outside the box belongs to the figure
        top, left = max(top - EDGE, 0), max(left - EDGE, 0)
        near = figure[top:bottom + EDGE, left:right + EDGE] >= FILL_INK
        rows, cols = np.nonzero(near)
        top, bottom, left, right = top + rows.min(), top + rows.max() + 1, left + cols.min(), left + cols.max() + 1
    figure = figure[top:bottom, left:right]
    if framing == "mnist":
        figure = np.where(figure >= INK / 2, figure, 0.0)  # stray near-background pixels inside the box
    scaled = _scaled(figure, side)
    if scaled.max() <= 0:
        raise DataError(f"{name}: the image is blank (nothing left after scaling)")
    if framing == "fill":
        top, left = (SIZE - scaled.shape[0] + 1) // 2, (SIZE - scaled.shape[1] + 1) // 2
        return _placed(scaled, top, left)
    scaled /= scaled.max()
    # centre of mass at the field's centre, (13.5, 13.5) in pixel indices
    total = scaled.sum()
    centre_row = (scaled.sum(axis=1) * np.arange(scaled.shape[0])).sum() / total
    centre_col = (scaled.sum(axis=0) * np.arange(scaled.shape[1])).sum() / total
    top = math.floor((SIZE - 1) / 2 - centre_row + 0.5)
    left = math.floor((SIZE - 1) / 2 - centre_col + 0.5)
    return _placed(scaled, top, left)


def _scaled(figure, side):
    """figure resized (Lanczos, aspect kept) so that its longer side is `side`; unchanged when it is."""
    from PIL import Image

    height, width = figure.shape
    if max(height, width) == side:
        return figure.copy()
    scale = side / max(height, width)
    new_size = (min(side, max(1, round(width * scale))), min(side, max(1, round(height * scale))))
    scaled = Image.fromarray(figure.astype(np.float32)).resize(new_size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(scaled, dtype=np.float64), 0.0, 1.0)


def _placed(scaled, top, left):
    field = np.zeros((SIZE, SIZE))
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + scaled.shape[0], SIZE), min(left + scaled.shape[1], SIZE)
    field[r0:r1, c0:c1] = scaled[r0 - top:r1 - top, c0 - left:c1 - left]
    return field


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__
