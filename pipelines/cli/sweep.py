"""`python -m pipelines sweep --settings OUT.json --axis attention_strength --values 0.5,0.8,1 --out-dir DIR`:
one request run several ways (A/B with and without the IC-LoRA, attention / control strengths, seeds), every
result plus grid.mp4 (labels, side by side) and grid.json (the pairwise differences)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="A/B with and without the IC-LoRA, or a sweep of strengths / seeds, "
                              "as one batch with a grid mp4",
                              description="Run one request several ways and write the results side by side.")
    p.add_argument("--settings", required=True, metavar="FILE.json",
                   help="the request: a result's .json sidecar (written beside every output) or a request JSON")
    p.add_argument("--axis", required=True, choices=["ab", "attention_strength", "control_strength", "seed"])
    p.add_argument("--values", default="", help="comma-separated values (none for ab), e.g. 0.5,0.8,1")
    p.add_argument("--columns", type=int, default=0, help="grid columns (default: one row up to 4)")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--out-dir", required=True, metavar="DIR")
    p.set_defaults(handler=_sweep)


def _sweep(args) -> int:
    from pathlib import Path

    from pipelines.cli import print_json
    from pipelines.errors import UserError
    from pipelines.limits import active, check_generate_inputs
    from pipelines.requests import GenerateRequest
    from pipelines.service import EngineService
    from pipelines.sweeps import SweepRequest, run_sweep

    base = GenerateRequest.from_json_file(args.settings).to_dict()
    values = [v.strip() for v in args.values.split(",") if v.strip()]
    sweep = SweepRequest(request=base, axis=args.axis, values=values, columns=args.columns).validate()
    for v in sweep.variants():
        for path in [*(c["path"] for c in v.request.get("controls") or []), *(lo["path"] for lo in
                     v.request.get("loras") or []), v.request.get("image"), v.request.get("mask")]:
            if path and not Path(path).is_file():
                raise UserError(f"file not found: {path}")
        active().check_generate(v.request)
        check_generate_inputs(v.request)
    res = run_sweep(EngineService(args.models_dir), sweep, args.out_dir)
    print_json({k: res[k] for k in ("grid", "videos", "labels", "notes", "differences", "notice")})
    return 0
