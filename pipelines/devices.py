"""What a worker process holds: its device memory in use and the models resident in its cache.

Read by the studio's Workers panel (in-process and on every Ray actor). Never imports torch or the model loader
itself: a process that has not loaded them yet holds no model and no device memory.
"""
from __future__ import annotations

import os
import sys

__all__ = ["memory_report", "resident_models"]


def _rss_bytes() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_report() -> dict:
    """{"device": "cuda:0" | "cpu", "allocated": bytes, "reserved": bytes, "total": bytes, "rss": bytes} of this
    process (allocated/reserved/total: the first visible GPU; None without CUDA or before torch is imported)."""
    out = {"device": "cpu", "allocated": None, "reserved": None, "total": None, "rss": _rss_bytes()}
    torch = sys.modules.get("torch")
    if torch is None:
        return out
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            i = torch.cuda.current_device()
            out.update(device=f"cuda:{i}", allocated=int(torch.cuda.memory_allocated(i)),
                       reserved=int(torch.cuda.memory_reserved(i)),
                       total=int(torch.cuda.get_device_properties(i).total_memory))
    except Exception:  # noqa: BLE001  a report must never fail the caller
        pass
    return out


def resident_models() -> list[str]:
    """Names (and memory tiers) of the models this process's model cache holds, e.g. ["tiny (bf16)"]."""
    loader = sys.modules.get("pipelines.models.loader")
    cache = getattr(loader, "_default_cache", None) if loader is not None else None
    models = getattr(cache, "_models", None) or {}
    return [f"{name} ({tier})" for name, tier in list(models)]
