"""An ordinary picture (PNG, JPEG, ...) of one digit or garment, made into what the network reads.

MNIST's digits were made this way: the figure cropped to its bounding box, scaled with
anti-aliasing so that its longer side is 20 pixels (aspect ratio kept), and placed in a
28x28 field so that its centre of mass sits at the centre; light figure on a dark background.
"""

import math

import numpy as np

from pipeline.errors import DataError

SIZE = 28  # side of the field
BOX = 20  # the figure's longer side within it
MIN_CONTRAST = 0.08  # figure and background differ by less than this (of full scale): blank
INK = 0.15  # after contrast stretching, pixels below this are background when finding the bounding box


def load_picture(path, invert=None) -> np.ndarray:
    """The picture at `path` as the training data has it: float32 array of shape (784,), in
    [0, 1], a light figure on a black background, made as MNIST was (see the module doc).

    invert: None decides from the picture (a mostly light border means a dark figure on a light
    background, which is inverted); True or False forces it. Transparent pixels count as white.
    Raises DataError for a file that is missing or not an image, and for a blank image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not an image file that can be read ({error})") from None
    if image.width == 0 or image.height == 0:
        raise DataError(f"{path}: the image is empty (0 pixels)")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(flat, image)
    gray = np.asarray(image.convert("L"), dtype=np.float64) / 255.0

    border = np.concatenate([gray[0, :], gray[-1, :], gray[:, 0], gray[:, -1]])
    if invert is None:
        invert = float(np.median(border)) > 0.5
    if invert:
        gray, border = 1.0 - gray, 1.0 - border

    background, peak = float(np.median(border)), float(gray.max())
    if peak - background < MIN_CONTRAST:
        raise DataError(f"{path}: the image is blank (no figure stands out from the background)")
    figure = np.clip((gray - background) / (peak - background), 0.0, 1.0)
    rows, cols = np.nonzero(figure >= INK)
    figure = figure[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    figure = np.where(figure >= INK / 2, figure, 0.0)  # stray near-background pixels inside the box

    height, width = figure.shape
    scale = BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scaled = Image.fromarray(figure.astype(np.float32)).resize(new_size, Image.Resampling.LANCZOS)
    scaled = np.clip(np.asarray(scaled, dtype=np.float64), 0.0, 1.0)
    if scaled.max() <= 0:
        raise DataError(f"{path}: the image is blank (nothing left after scaling)")
    scaled /= scaled.max()

    # place it so that its centre of mass is at the field's centre, (13.5, 13.5) in pixel indices
    total = scaled.sum()
    centre_row = (scaled.sum(axis=1) * np.arange(scaled.shape[0])).sum() / total
    centre_col = (scaled.sum(axis=0) * np.arange(scaled.shape[1])).sum() / total
    top = math.floor((SIZE - 1) / 2 - centre_row + 0.5)
    left = math.floor((SIZE - 1) / 2 - centre_col + 0.5)
    field = np.zeros((SIZE, SIZE))
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + scaled.shape[0], SIZE), min(left + scaled.shape[1], SIZE)
    field[r0:r1, c0:c1] = scaled[r0 - top:r1 - top, c0 - left:c1 - left]

    # the training data's values: uint8 pixels divided by 255 in float32
    pixels = np.rint(field * 255).astype(np.uint8)
    return pixels.reshape(-1).astype(np.float32) / np.float32(255)
