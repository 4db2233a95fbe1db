"""The one preprocessing implementation shared by training and the plugin."""
from __future__ import annotations

import numpy as np
import pytest

from orthanc_ai.models.preprocessing import (
    PixelAttributes,
    Preprocessing,
    apply_window,
    frame_to_unit_grey,
    grey_from_8bit,
    pad_to_square,
    resize_antialiased,
    unit_grey_to_tensor,
)

SPEC = Preprocessing(height=32, width=32, ct_window=(-600, 1500))


def test_ct_in_hounsfield_units_gets_the_model_window():
    stored = np.array([[0, 2048 - 600, 4095]], dtype=np.int16)  # -2048 HU, lung window centre, 2047 HU
    attributes = PixelAttributes(modality="CT", bits_stored=12, rescale_slope=1, rescale_intercept=-2048)
    grey = frame_to_unit_grey(stored, attributes, SPEC)
    assert grey[0, 0] == 0.0 and grey[0, 2] == 1.0
    assert abs(grey[0, 1] - 0.5) < 0.01


def test_secondary_capture_of_a_ct_is_display_ready():
    stored = np.array([[0, 128, 255]], dtype=np.uint8)
    grey = frame_to_unit_grey(stored, PixelAttributes(modality="CT", bits_stored=8), SPEC)
    assert np.allclose(grey, [[0, 128 / 255, 1]])
    assert np.allclose(grey, grey_from_8bit(stored))  # the same as the training images


def test_monochrome1_is_inverted():
    stored = np.array([[0, 255]], dtype=np.uint8)
    grey = frame_to_unit_grey(stored, PixelAttributes(photometric="MONOCHROME1", bits_stored=8), SPEC)
    assert list(grey[0]) == [1.0, 0.0]


def test_file_window_is_used_for_radiographs():
    stored = np.array([[1000, 2000, 3000]], dtype=np.uint16)
    attributes = PixelAttributes(modality="CR", bits_stored=12, window_center=2000, window_width=2000)
    grey = frame_to_unit_grey(stored, attributes, Preprocessing(height=8, width=8))
    assert np.allclose(grey, [[0.0, 0.5, 1.0]], atol=1e-3)


def test_16_bit_without_window_uses_robust_percentiles():
    stored = np.linspace(0, 65535, 10000, dtype=np.float64).reshape(100, 100).astype(np.uint16)
    stored[0, 0] = 65535  # an outlier does not squash the range
    grey = frame_to_unit_grey(stored, PixelAttributes(modality="DX", bits_stored=16), Preprocessing(height=8, width=8))
    assert grey.min() == 0.0 and grey.max() == 1.0 and abs(float(np.median(grey)) - 0.5) < 0.02


def test_colour_becomes_luminance():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    grey = frame_to_unit_grey(rgb, PixelAttributes(photometric="RGB"), SPEC)
    assert np.allclose(grey, 0.587, atol=1e-3)


def test_window_follows_ps3_3_c_11_2_1_2():
    values = np.array([-1000.0, 40.0, 1000.0])
    assert np.allclose(apply_window(values, 40, 400), [0.0, 0.5 + 0.5 / 399, 1.0], atol=1e-3)


def test_pad_keeps_aspect_and_centres():
    image = np.ones((2, 4), dtype=np.float32)
    square = pad_to_square(image)
    assert square.shape == (4, 4)
    assert square[0].sum() == 0 and square[1].sum() == 4


def test_resize_is_antialiased_and_preserves_mean():
    rng = np.random.default_rng(0)
    image = rng.random((512, 512)).astype(np.float32)
    small = resize_antialiased(image, 32, 32)
    assert small.shape == (32, 32)
    assert abs(small.mean() - image.mean()) < 0.01
    assert small.std() < image.std() / 4  # noise averaged out, not aliased through
    big = resize_antialiased(rng.random((3000, 2500)).astype(np.float32), 64, 64)
    assert big.shape == (64, 64)


def test_tensor_shape_and_normalisation():
    tensor = unit_grey_to_tensor(np.full((40, 20), 0.5, dtype=np.float32),
                                 Preprocessing(height=16, width=16, channels=3))
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == np.float32
    assert tensor[0, 0, 8, 8] == pytest.approx(0.0)  # (0.5 - 0.5) / 0.25
    assert tensor[0, 0, 8, 0] == pytest.approx(-2.0)  # padding is black


def test_bad_specs_are_refused():
    with pytest.raises(ValueError):
        Preprocessing(height=32, width=32, resize="crop").validate()
    with pytest.raises(ValueError):
        Preprocessing(height=32, width=32, channels=2).validate()
