"""pipeline.picture.load_picture: ordinary image files made into the form of the model's dataset."""

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.errors import DataError
from pipeline.picture import FRAMINGS, MAX_FILE_BYTES, default_framing, frame, load_picture


def ring(size=(200, 260), box=(40, 50, 160, 210), ink=0, paper=255, mode="L"):
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).ellipse(box, outline=ink, width=16)
    return image


def one(ink=0, paper=255):
    """A thick '1': a stem, a flag and a foot, taller than wide."""
    image = Image.new("L", (240, 240), paper)
    draw = ImageDraw.Draw(image)
    draw.rectangle((110, 30, 132, 200), fill=ink)
    draw.polygon([(110, 30), (80, 62), (86, 72), (112, 52)], fill=ink)
    draw.rectangle((90, 190, 152, 204), fill=ink)
    return image


def save(image, path, **options):
    image.save(path, **options)
    return path


def grid(array):
    return array.reshape(28, 28)


def centre_of_mass(array):
    field = grid(array).astype(np.float64)
    rows, cols = np.indices(field.shape)
    return (rows * field).sum() / field.sum(), (cols * field).sum() / field.sum()


def bounding_box(array):
    rows, cols = np.nonzero(grid(array))
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_dark_on_light_and_light_on_dark_give_the_same_array(tmp_path):
    dark_on_light = load_picture(save(ring(ink=0, paper=255), tmp_path / "a.png"))
    light_on_dark = load_picture(save(ring(ink=255, paper=0), tmp_path / "b.png"))
    np.testing.assert_array_equal(dark_on_light, light_on_dark)
    np.testing.assert_array_equal(load_picture(tmp_path / "a.png", invert=True), dark_on_light)
    np.testing.assert_array_equal(load_picture(tmp_path / "b.png", invert=False), light_on_dark)


def test_the_array_is_in_the_training_datas_form(tmp_path):
    array = load_picture(save(ring(), tmp_path / "ring.png"))
    assert array.shape == (784,) and array.dtype == np.float32
    assert array.max() == 1.0 and array.min() == 0.0
    np.testing.assert_array_equal(array * 255, np.rint(array * 255))  # uint8 pixels / 255
    field = grid(array)
    assert not field[0].any() and not field[-1].any() and not field[:, 0].any() and not field[:, -1].any()
    assert (array == 0).mean() > 0.5  # the background is exactly 0


@pytest.mark.parametrize("figure", [ring, one])
def test_the_figure_is_20_pixels_on_its_longer_side_and_centred_by_mass(tmp_path, figure):
    array = load_picture(save(figure(), tmp_path / "figure.png"))
    top, bottom, left, right = bounding_box(array)
    assert max(bottom - top + 1, right - left + 1) == 20
    row, col = centre_of_mass(array)
    assert abs(row - 13.5) <= 0.6 and abs(col - 13.5) <= 0.6


def test_aspect_ratio_is_kept(tmp_path):
    array = load_picture(save(one(), tmp_path / "one.png"))
    top, bottom, left, right = bounding_box(array)
    assert bottom - top + 1 == 20
    assert 6 <= right - left + 1 <= 10  # the '1' is 72 wide and 174 tall: about 8 of 20


def test_position_and_size_in_the_picture_do_not_matter(tmp_path):
    centred = load_picture(save(ring(), tmp_path / "centred.png"))
    corner = load_picture(save(ring(size=(600, 500), box=(10, 10, 130, 170)), tmp_path / "corner.png"))
    np.testing.assert_allclose(corner, centred, atol=2 / 255)
    large = load_picture(save(ring().resize((400, 520), Image.Resampling.BICUBIC), tmp_path / "large.png"))
    assert np.abs(large - centred).mean() < 0.02


def test_colour_jpeg_and_transparent_png(tmp_path):
    reference = load_picture(save(ring(), tmp_path / "ring.png"))
    jpeg = load_picture(save(ring(mode="RGB", ink=(20, 30, 90), paper=(250, 245, 235)), tmp_path / "ring.jpg",
                             quality=85))
    assert np.abs(jpeg - reference).mean() < 0.03
    assert jpeg.max() == 1.0 and grid(jpeg)[0].max() == 0.0
    transparent = ring(mode="RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0))  # dark strokes, see-through paper
    np.testing.assert_allclose(load_picture(save(transparent, tmp_path / "t.png")), reference, atol=1 / 255)


def test_a_grey_background_becomes_black(tmp_path):
    array = load_picture(save(ring(ink=40, paper=200), tmp_path / "grey.png"))
    np.testing.assert_allclose(array, load_picture(save(ring(), tmp_path / "ring.png")), atol=2 / 255)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not a picture\n"), "not an image"),
    (lambda p: p.write_bytes(b""), "not an image"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "not an image"),
    (lambda p: Image.new("L", (50, 50), 255).save(p, format="PNG"), "blank"),
    (lambda p: Image.new("L", (50, 50), 0).save(p, format="PNG"), "blank"),
    (lambda p: Image.effect_noise((64, 64), 2).save(p, format="PNG"), "blank"),
    (lambda p: None, "no such file"),
])
def test_clear_one_line_errors(tmp_path, make, message):
    path = tmp_path / "picture.png"
    make(path)
    with pytest.raises(DataError) as raised:
        load_picture(path)
    text = str(raised.value)
    assert message in text and str(path) in text and "\n" not in text


# --- framings: a picture framed as the model's dataset was ---

def figure_field(framing, seed):
    """A generated dataset image (uint8 (28, 28), light on black) in the framing's form: a
    random filled polygon drawn large, then framed by the framing itself."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("L", (160, 160), 0)
    points = [tuple(int(v) for v in p) for p in rng.integers(10, 150, (6, 2))]
    ImageDraw.Draw(canvas).polygon(points, fill=int(rng.integers(120, 256)))
    ImageDraw.Draw(canvas).line(points[:3], fill=255, width=int(rng.integers(4, 14)))
    gray = np.asarray(canvas, np.float64) / 255
    return np.rint(frame(gray, 0.0, framing) * 255).astype(np.uint8)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_dataset_image_saved_as_a_picture_is_taken_as_it_is(tmp_path, framing):
    for seed in range(20):
        field = figure_field(framing, seed)
        path = save(Image.fromarray(field), tmp_path / f"{seed}.png")
        np.testing.assert_array_equal(load_picture(path, framing=framing), field.reshape(-1) / np.float32(255))


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_dataset_image_inverted_off_centre_on_a_larger_canvas_is_framed_back(tmp_path, framing):
    """fill: exactly; mnist: within 1/255 on average, up to a shift of one pixel where the centre of
    mass of the quantized image rounds the other way."""
    for seed in range(20):
        field = figure_field(framing, seed)
        canvas = Image.new("L", (60, 60), 255)
        canvas.paste(Image.fromarray(255 - field), (3 + seed, 29 - seed))
        array = grid(load_picture(save(canvas, tmp_path / f"{seed}.png"), framing=framing))
        if framing == "fill":
            np.testing.assert_array_equal(array * 255, field)
            continue
        shifts = [np.abs(np.roll(array, (dr, dc), axis=(0, 1)) - field / 255).mean()
                  for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
        assert min(shifts) <= 1 / 255


def test_fill_scales_the_longer_side_to_28_and_centres_the_box_keeping_intensities(tmp_path):
    image = Image.new("L", (300, 200), 0)
    ImageDraw.Draw(image).rectangle((50, 40, 249, 139), fill=128)  # 200 wide, 100 tall, half intensity
    field = grid(load_picture(save(image, tmp_path / "wide.png"), framing="fill"))
    top, bottom, left, right = bounding_box(field.reshape(-1))
    assert (left, right) == (0, 27) and (top, bottom) == (7, 20)  # 14 rows, the odd one below
    assert abs(field[14, 14] - 128 / 255) <= 1 / 255


def test_the_default_framing_follows_the_dataset():
    assert default_framing("fashion-mnist") == "fill"
    assert default_framing("mnist") == default_framing("my-digits") == "mnist"
    with pytest.raises(DataError, match="unknown framing 'crop'"):
        load_picture("anything.png", framing="crop")


@pytest.mark.parametrize("make, message", [
    (lambda p: os.truncate(_touch(p), MAX_FILE_BYTES + 1), "more than the"),
    (lambda p: p.write_bytes(huge_png_header(12000, 12000)), "12000x12000 pixels, more than"),
    (lambda p: p.write_bytes(huge_png_header(40000, 40000)), "more than the 40000000 pixels"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: p.write_bytes(_png_bytes()[:-40]), "not an image file that can be read"),
    (lambda p: Image.new("RGB", (30, 30), 255).save(p, format="PCX"), "not an image file that can be read"),
])
def test_a_picture_is_checked_before_it_is_decoded(tmp_path, make, message):
    path = tmp_path / "picture.png"
    make(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a warning on the way
        with pytest.raises(DataError) as raised:
            load_picture(path)
    assert message in str(raised.value) and str(path) in str(raised.value) and "\n" not in str(raised.value)


def _touch(path):
    path.write_bytes(b"")
    return path


def _png_bytes():
    buffer = io.BytesIO()
    ring().save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width, height):
    """A PNG whose header announces width x height pixels, with a little image data: a picture
    that would take width * height bytes and more once decoded."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(width + 1) * 4)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_28x28_picture_not_in_the_framings_form_is_framed(tmp_path, framing):
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).rectangle((1, 2, 9, 14), fill=255)  # small, in a corner
    array = load_picture(save(image, tmp_path / "corner.png"), framing=framing)
    top, bottom, left, right = bounding_box(array)
    side = 20 if framing == "mnist" else 28
    assert max(bottom - top + 1, right - left + 1) == side
    assert abs((top + bottom) / 2 - 13.5) <= 1 and abs((left + right) / 2 - 13.5) <= 1
