"""A/B and sweeps: one request run several ways as one batch, the results side by side (pipelines.grid).

    sweep = SweepRequest(request=req.to_dict(), axis="attention_strength", values=[0.5, 0.8, 1.0])
    for v in sweep.variants(): ...             # (label, GenerateRequest dict) each
    run_sweep(service, sweep, out_dir)          # every variant, then grid.mp4 and the pairwise differences

Axes:
- ``ab``: the request as it is (A) and without its IC-LoRA (B): the controls, the mask and the IC-LoRAs dropped,
  everything else (prompt, seed, size, other LoRAs) the same. "Compare with and without IC-LoRA to assess control
  strength" (Lightricks' IC-LoRA docs). A LoRA counts as an IC-LoRA when its metadata carries a reference scale
  factor; a request with controls whose LoRAs carry none (an IC-LoRA at D=1 written by the official trainer has
  no key) drops all of them, and the variant's note says so.
- ``attention_strength``: the reference attention strength (SPEC.md 2), e.g. 0.5 / 0.8 / 1.0.
- ``control_strength``: every control's conditioning strength.
- ``seed``: seeds.

No gradio, no studio: the job kind (studio/kinds/sweep.py), the API and the CLI call this.
"""
from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.errors import UserError

MAX_VARIANTS = 8  # one batch holds at most this many generations (pipelines.limits checks the sizes of each)


class SweepAxis(str, enum.Enum):
    AB = "ab"
    ATTENTION = "attention_strength"
    CONTROL = "control_strength"
    SEED = "seed"

    @classmethod
    def parse(cls, value) -> "SweepAxis":
        if isinstance(value, SweepAxis):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise UserError(f"sweep axis {value!r} must be one of: {', '.join(a.value for a in cls)}") from None


@dataclass
class Variant:
    label: str
    request: dict
    note: str = ""


@dataclass
class SweepRequest:
    request: dict                      # the base GenerateRequest as a dict
    axis: SweepAxis = SweepAxis.AB
    values: list = field(default_factory=list)
    columns: int = 0                   # grid columns (0: one row up to 4)

    def validate(self) -> "SweepRequest":
        from pipelines.requests import GenerateRequest

        self.axis = SweepAxis.parse(self.axis)
        if not isinstance(self.request, dict):
            raise UserError("a sweep needs the request to run (a GenerateRequest dict)")
        GenerateRequest.from_dict(self.request).validate()
        vals = list(self.values or [])
        if self.axis is SweepAxis.AB:
            if vals:
                raise UserError("an A/B sweep takes no values: it runs the request with and without its IC-LoRA")
            if not self.request.get("controls"):
                raise UserError("nothing to compare: this request has no control video, so there is no IC-LoRA to "
                                "turn off; add a control or sweep seeds instead")
        else:
            if len(vals) < 2:
                raise UserError(f"a {self.axis.value} sweep needs at least 2 values (got {len(vals)})")
            parsed = []
            for v in vals:
                try:
                    parsed.append(int(v) if self.axis is SweepAxis.SEED else float(v))
                except (TypeError, ValueError):
                    raise UserError(f"{self.axis.value} value {v!r} is not a number") from None
            if self.axis is SweepAxis.SEED:
                if any(s < 0 or s >= 2**63 for s in parsed) or any(float(v) != int(v) for v in vals):
                    raise UserError("seeds must be non-negative whole numbers")
            elif any(not (0.0 <= s <= 1.0) for s in parsed):
                raise UserError(f"{self.axis.value} values must be between 0 and 1 (got {vals})")
            if self.axis is SweepAxis.CONTROL and not self.request.get("controls"):
                raise UserError("a control-strength sweep needs a request with a control video")
            if self.axis is SweepAxis.ATTENTION and not self.request.get("controls"):
                raise UserError("an attention-strength sweep needs a request with a control video")
            if len(set(parsed)) != len(parsed):
                raise UserError(f"{self.axis.value} values repeat: {vals}")
            self.values = parsed
        n = 2 if self.axis is SweepAxis.AB else len(self.values)
        if n > MAX_VARIANTS:
            raise UserError(f"a sweep runs at most {MAX_VARIANTS} generations; got {n} values")
        if not (0 <= int(self.columns) <= MAX_VARIANTS):
            raise UserError(f"columns={self.columns} must be between 0 and {MAX_VARIANTS}")
        return self

    def variants(self) -> list[Variant]:
        self.validate()
        base = json.loads(json.dumps(self.request))  # a deep copy of plain JSON
        if self.axis is SweepAxis.AB:
            b, note = without_ic_lora(base)
            return [Variant("with IC-LoRA", base), Variant("without IC-LoRA", b, note)]
        out = []
        for v in self.values:
            r = json.loads(json.dumps(base))
            if self.axis is SweepAxis.ATTENTION:
                r["attention_strength"] = v
                label = f"attention {v:g}"
            elif self.axis is SweepAxis.CONTROL:
                for c in r["controls"]:
                    c["strength"] = v
                label = f"control {v:g}"
            else:
                r["seed"] = v
                label = f"seed {v}"
            out.append(Variant(label, r))
        return out

    def to_dict(self) -> dict:
        return {"request": self.request, "axis": SweepAxis.parse(self.axis).value, "values": list(self.values),
                "columns": int(self.columns)}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepRequest":
        if not isinstance(data, dict):
            raise UserError("a sweep must be a JSON object with request, axis and values")
        unknown = sorted(set(data) - {"request", "axis", "values", "columns"})
        if unknown:
            raise UserError(f"unknown sweep setting(s): {', '.join(unknown)}")
        try:
            return cls(request=data.get("request"), axis=SweepAxis.parse(data.get("axis", "ab")),
                       values=list(data.get("values") or []), columns=int(data.get("columns") or 0)).validate()
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid sweep: {exc}") from None


def without_ic_lora(request: dict) -> tuple[dict, str]:
    """The request with its controls, mask and IC-LoRAs dropped, and a note saying what was dropped."""
    r = json.loads(json.dumps(request))
    loras = r.get("loras") or []
    ic, other = [], []
    for lo in loras:
        (ic if _is_ic_lora(lo.get("path")) else other).append(lo)
    note = []
    if r.get("controls") and loras and not ic:
        ic, other = loras, []
        note.append("no LoRA's metadata names a reference factor; all LoRAs were treated as the IC-LoRA")
    n_controls = len(r.get("controls") or [])
    r["controls"], r["loras"] = [], other
    r["mask"] = None
    r["attention_strength"] = 1.0
    dropped = [f"{n_controls} control{'s' if n_controls != 1 else ''}"] + [Path(lo["path"]).name for lo in ic]
    note.insert(0, "dropped: " + ", ".join(dropped))
    return r, "; ".join(note)


def _is_ic_lora(path) -> bool:
    from pipelines.fit import is_ic_lora

    return bool(path) and is_ic_lora(path)


# ---------------------------------------------------------------------------------------------- running

ProgressFn = Callable[[float, str, "str | None"], None]


def run_sweep(service, sweep: SweepRequest | dict, out_dir: str | os.PathLike, progress: ProgressFn | None = None,
              should_cancel: Callable[[], bool] | None = None) -> dict:
    """Run every variant through ``service.generate`` (one after the other: one GPU), then the grid mp4 with the
    labels and the pairwise mean absolute differences between the results (on the exact frames, before h264).
    Returns the result dict."""
    from pipelines.errors import Cancelled
    from pipelines.grid import mean_abs_difference, write_grid
    from pipelines.video_io import read_video

    sweep = sweep if isinstance(sweep, SweepRequest) else SweepRequest.from_dict(sweep)
    variants = sweep.variants()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(variants)
    videos, settings, notices, exact = [], [], [], []
    for k, v in enumerate(variants):
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled by the user")

        def sub(fraction, message, preview, k=k, label=v.label):
            if progress is not None:
                progress((k + min(max(fraction, 0.0), 1.0)) / (n + 0.2), f"{k + 1}/{n} {label}: {message}", preview)

        res = service.generate(v.request, out / f"variant-{k + 1}.mp4", progress=sub, should_cancel=should_cancel,
                               preview_dir=out / "preview")
        videos.append(res["video"])
        exact.append(res.get("frames"))
        settings.append(res["settings"])
        notices.append(res.get("metadata", {}).get("notice", ""))
    if progress is not None:
        progress(n / (n + 0.2), "composing the grid", None)
    # the exact frames the engine made (a service that returns only files: the decoded files)
    frames = [f if f is not None else read_video(p)[0] for f, p in zip(exact, videos)]
    labels = [v.label for v in variants]
    diffs = [[round(mean_abs_difference(a, b), 4) for b in frames] for a in frames]
    meta = {"app": "iclora-studio", "sweep": sweep.to_dict(), "labels": labels,
            "notes": [v.note for v in variants], "differences": diffs, "videos": [Path(p).name for p in videos]}
    fps = float(sweep.request.get("fps") or 24.0)
    grid = write_grid(out / "grid.mp4", frames, labels, fps, columns=sweep.columns, comment=json.dumps(meta))
    sidecar = out / "grid.json"
    tmp = sidecar.with_name(".grid.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, sidecar)
    if progress is not None:
        progress(1.0, "done", None)
    return {"videos": videos, "labels": labels, "notes": [v.note for v in variants], "grid": str(grid),
            "settings": settings, "differences": diffs, "sidecar": str(sidecar),
            "notice": next((x for x in notices if x), "")}
