"""Sigma schedules (SPEC.md 3), as Lightricks' ltx-pipelines computes them.

- Distilled: the 8 fixed sigmas, and the 3-step stage-2 refine (requests.DISTILLED_SIGMAS / STAGE2_SIGMAS).
- Full (dev): ltx-core's LTX2Scheduler. ltx-pipelines calls it WITHOUT a latent (`LTX2Scheduler().execute(steps=n)`),
  so the shift is the one of its 4096-token anchor (2.05) whatever the resolution or the number of reference tokens,
  then the schedule is stretched so its last non-zero sigma is 0.1. (diffusers' LTX-2 pipelines instead shift by the
  number of tokens in the sequence, references included; we follow the official schedule.)

Every schedule is computed fresh per run from the request: nothing is kept on a scheduler object between runs.
"""
from __future__ import annotations

import math

from pipelines.requests import DISTILLED_SIGMAS, STAGE2_SIGMAS, Schedule

BASE_SHIFT_TOKENS = 1024
MAX_SHIFT_TOKENS = 4096


def ltx2_shift(tokens: int, base_shift: float = 0.95, max_shift: float = 2.05) -> float:
    """The log-SNR shift, linear in the token count between the two anchors (1024 -> 0.95, 4096 -> 2.05)."""
    slope = (max_shift - base_shift) / (MAX_SHIFT_TOKENS - BASE_SHIFT_TOKENS)
    return tokens * slope + (base_shift - slope * BASE_SHIFT_TOKENS)


def ltx2_sigmas(steps: int, tokens: int = MAX_SHIFT_TOKENS, base_shift: float = 0.95, max_shift: float = 2.05,
                stretch: bool = True, terminal: float = 0.1):
    """steps + 1 float32 sigmas from 1 to 0: linear, shifted, then stretched so the last non-zero one is `terminal`.
    Same float32 operations as ltx-core's LTX2Scheduler.execute (so the values agree bit for bit)."""
    import torch

    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    e = math.exp(ltx2_shift(tokens, base_shift, max_shift))
    sigmas = torch.where(sigmas != 0, e / (e + (1 / sigmas - 1)), 0)
    if stretch:
        nonzero = sigmas != 0
        one_minus = 1.0 - sigmas[nonzero]
        sigmas[nonzero] = 1.0 - one_minus / (one_minus[-1] / (1.0 - terminal))
    return sigmas.to(torch.float32)


def stage1_sigmas(schedule: Schedule, steps: int):
    """The first (or only) stage's sigmas, ending in 0."""
    import torch

    if Schedule(schedule) == Schedule.DISTILLED:
        return torch.tensor(DISTILLED_SIGMAS, dtype=torch.float32)
    return ltx2_sigmas(steps)


def stage2_sigmas():
    import torch

    return torch.tensor(STAGE2_SIGMAS, dtype=torch.float32)
