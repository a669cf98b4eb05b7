"""Multi-region strength (issue 15.5): the painter paints values, not only 0/1 (the brush's shade is its value),
and the latent preview shows them."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines import mask_ui
from studio.tabs import masks as tab


def _stroke_layer(h, w, regions, scale=1):
    """An RGBA layer as the browser's brush leaves it: opaque strokes in the brush colour of each value."""
    layer = np.zeros((h * scale, w * scale, 4), np.uint8)
    for (y0, y1, x0, x1), value in regions:
        layer[y0 * scale:y1 * scale, x0 * scale:x1 * scale, :3] = mask_ui.paint_color(value)
        layer[y0 * scale:y1 * scale, x0 * scale:x1 * scale, 3] = 255
    return layer


def test_brush_shades_are_values():
    assert mask_ui.paint_hex(1.0) == "#ff3355"
    assert [round(float(mask_ui.layer_values(np.array([[[*mask_ui.paint_color(v), 255]]], np.uint8))[0, 0]), 2)
            for v in mask_ui.PAINT_LEVELS] == [1.0, 0.75, 0.5, 0.25]
    # an anti-aliased stroke edge (alpha 128) of the 0.5 brush is worth 0.25
    assert mask_ui.layer_values(np.array([[[*mask_ui.paint_color(0.5), 128]]], np.uint8))[0, 0] == \
        pytest.approx(0.25, abs=0.01)


def test_regions_painted_with_different_values_reach_the_latent_preview():
    # left third 1.0, middle third 0.5 (painted OVER a 1.0 stroke: the later stroke sets the value), right 0.25
    layer = _stroke_layer(64, 96, [((0, 64, 0, 64), 1.0), ((0, 64, 32, 64), 0.5), ((0, 64, 64, 96), 0.25)], scale=5)
    ed = {"background": np.zeros((320, 480, 3), np.uint8), "layers": [layer], "composite": None}
    a = mask_ui.alpha_from_editor(ed, 96, 64)
    assert np.allclose(a[:, :32], 1.0) and np.allclose(a[:, 32:64], 0.5, atol=0.003)
    assert np.allclose(a[:, 64:], 0.25, atol=0.003)
    pix, lat, table, note = tab.preview(None, ed, {}, 0, 96, 64, 9, 1, 0.8, 0, 0, False, 0)
    # one latent token per 32x32 px: 3 columns of tokens carrying value x strength
    assert np.allclose(np.array(table), [[0.8, 0.4, 0.2], [0.8, 0.4, 0.2]], atol=0.003)
    # the latent view colours each token by its weight: three different colours in the three columns
    cols = [tuple(lat[lat.shape[0] // 4, int(lat.shape[1] * f)]) for f in (0.1, 0.45, 0.8)]
    assert len(set(cols)) == 3
    # and the saved mask (what the engine reads) keeps the values
    spec, pixels, reference, weights = tab.compute(ed, {}, 96, 64, 9, 1, 1.0, 0, 0, False, 0)
    assert np.allclose(reference[0, :, 40], 0.5, atol=0.003)
