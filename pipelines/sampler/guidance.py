"""Guidance as small pure functions over denoised (x0) predictions, like k-diffusion's samplers.

The maths is Lightricks' multi-modal guider (ltx-core `MultiModalGuider.calculate`), applied per modality:

    pred = cond + (cfg - 1)(cond - uncond) + stg (cond - perturbed) + (modality - 1)(cond - isolated)
    rescale r != 0:  pred *= r * std(cond) / std(pred) + (1 - r)

- uncond:    the model with the negative prompt (CFG),
- perturbed: the model with video (audio) self-attention skipped in the STG blocks (STG),
- isolated:  the model with the audio<->video cross-attention switched off (modality guidance).

A term whose pass is not run contributes with the pass's value taken as 0, exactly as the official guider does, so
the arithmetic (and its rounding) is the same. Defaults are ltx-pipelines' LTX_2_3_PARAMS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

#: ltx-pipelines' LTX-2.3 STG block, on a 48-block transformer.
OFFICIAL_STG_BLOCKS = (28,)
OFFICIAL_NUM_BLOCKS = 48


@dataclass(frozen=True)
class GuidanceParams:
    cfg: float = 1.0
    stg: float = 0.0
    stg_blocks: tuple[int, ...] = field(default_factory=tuple)
    rescale: float = 0.0
    modality: float = 1.0
    skip_step: int = 0

    # which extra model passes this guidance needs (same tests as the official guider)
    @property
    def needs_uncond(self) -> bool:
        return not math.isclose(self.cfg, 1.0)

    @property
    def needs_perturbed(self) -> bool:
        return not math.isclose(self.stg, 0.0)

    @property
    def needs_isolated(self) -> bool:
        return not math.isclose(self.modality, 1.0)

    def skips(self, step: int) -> bool:
        """With skip_step k > 0 only every (k+1)-th step is guided; the others reuse the last prediction."""
        return self.skip_step > 0 and step % (self.skip_step + 1) != 0


#: ltx-pipelines LTX_2_3_PARAMS (constants.py): video and audio guiders of the Full (dev) model.
VIDEO_DEFAULTS = GuidanceParams(cfg=3.0, stg=1.0, stg_blocks=OFFICIAL_STG_BLOCKS, rescale=0.7, modality=3.0)
AUDIO_DEFAULTS = GuidanceParams(cfg=7.0, stg=1.0, stg_blocks=OFFICIAL_STG_BLOCKS, rescale=0.7, modality=3.0)
#: distilled runs: one model pass per step, no guidance
NO_GUIDANCE = GuidanceParams()


def guide(cond, uncond=0.0, perturbed=0.0, isolated=0.0, p: GuidanceParams = NO_GUIDANCE):
    """The guided x0 prediction from the conditional one and whichever of the three other passes ran."""
    pred = (cond + (p.cfg - 1) * (cond - uncond) + p.stg * (cond - perturbed)
            + (p.modality - 1) * (cond - isolated))
    if p.rescale != 0:
        factor = cond.std() / pred.std()
        factor = p.rescale * factor + (1 - p.rescale)
        pred = pred * factor
    return pred


def map_blocks(blocks, num_blocks: int, reference: int = OFFICIAL_NUM_BLOCKS) -> tuple[int, ...]:
    """STG block indices are given for the official 48-block layout; a model with another depth gets the block at
    the same relative depth (round(b * (n - 1) / (reference - 1))). Identity for a 48-block model."""
    out = []
    for b in blocks:
        b = int(b)
        if not 0 <= b < reference:
            raise ValueError(f"STG block {b} is outside 0..{reference - 1}")
        out.append(b if num_blocks == reference else round(b * (num_blocks - 1) / (reference - 1)))
    return tuple(sorted(set(out)))
