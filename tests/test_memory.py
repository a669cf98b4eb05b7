"""Memory tiers: the predicted peak VRAM the studio shows before a run (real LTX-2.3 component sizes)."""
from __future__ import annotations

from pipelines.models.memory import REAL, estimate
from pipelines.requests import MemoryTier as T

GB = 1024**3


def test_tiers_are_ordered_and_grow_with_the_shape():
    small = {t: estimate(t, 768, 512, 121).peak_gb for t in (T.BF16, T.FP8, T.OFFLOAD, T.GROUP_OFFLOAD)}
    assert small[T.BF16] > small[T.FP8] > small[T.OFFLOAD] > small[T.GROUP_OFFLOAD]
    assert estimate(T.OFFLOAD, 1280, 704, 241, refs=1).peak_gb > small[T.OFFLOAD]
    assert estimate(T.BF16, 1280, 704, 241, refs=1).activations_gb > estimate(T.BF16, 768, 512, 121).activations_gb
    # a D=2 reference has a quarter of the tokens (at a shape where the transformer, not the VAE, dominates)
    assert estimate(T.BF16, 1280, 704, 241, refs=1, downscale=2).activations_gb \
        < estimate(T.BF16, 1280, 704, 241, refs=1, downscale=1).activations_gb


def test_resident_tiers_count_the_text_encoder_visit_beside_the_weights():
    e = estimate(T.BF16, 768, 512, 121)
    weights = ((REAL["transformer"] + REAL["connectors"]) * 2 + REAL["vae"] * 2) / GB
    assert abs(e.weights_gb - weights) < 1e-6
    assert abs(e.text_encoder_gb - (weights + REAL["text_encoder"] * 2 / GB)) < 1e-6  # parked, visits to encode
    assert e.peak_gb >= e.text_encoder_gb and e.peak_gb >= e.weights_gb + e.activations_gb
    assert "predicted peak" in e.text() and "bf16" in e.text()
    # model offload: one model at a time, so the text encoder alone is its phase
    assert abs(estimate(T.OFFLOAD, 768, 512, 121).text_encoder_gb - REAL["text_encoder"] * 2 / GB) < 1e-6
