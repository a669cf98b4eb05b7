"""IC-LoRA Studio: `python app.py` serves the studio on http://127.0.0.1:7860.

With no LTX-2.3 weights configured it runs on the built-in tiny test model (random weights: output is noise) and
says so in the UI. Point --models-dir (or ICLORA_MODELS_DIR) at a folder with LTX-2.3 to generate for real.
"""
from __future__ import annotations

import argparse
import os
import sys

# No analytics, no hub lookups at run time (set before gradio / huggingface_hub are imported).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

if os.environ.get("SYSTEM") == "spaces" and os.environ.get("SPACES_ZERO_GPU", "").lower() == "true":
    import spaces  # noqa: F401  ZeroGPU needs this imported before anything initialises CUDA


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="IC-LoRA Studio for LTX-2.3")
    p.add_argument("--host", default=None, help="address to bind (default $GRADIO_SERVER_NAME or 127.0.0.1; "
                                                "--listen for 0.0.0.0)")
    p.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 (your LAN)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--models-dir", default=os.environ.get("ICLORA_MODELS_DIR"), help="folder with LTX-2.3 weights")
    p.add_argument("--outputs-dir", default=os.environ.get("ICLORA_OUTPUTS_DIR", "outputs"))
    p.add_argument("--model", default="tiny", help="model to select by default: tiny or a name from the Models tab")
    p.add_argument("--auth", default=None, metavar="FILE", help="users file (python -m studio.cli_users add FILE NAME)")
    p.add_argument("--max-file-size", default="2gb", help="upload size limit, e.g. 500mb")
    p.add_argument("--admins", default="", metavar="NAME[,NAME]",
                   help="with --auth: the users who may download weights into the shared models folder")
    add_limit_arguments(p)
    add_scale_arguments(p)
    return p.parse_args(argv)


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Where GPU jobs run. Without --ray: in this process, one at a time (Ray is not needed, not imported)."""
    g = p.add_argument_group("scale out (optional: pip install -r requirements-ray.txt)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run GPU jobs on Ray actors, one per GPU: 'auto' (this box's GPUs, or the Ray head already "
                        "started on it) or ray://HEAD:10001 (an existing cluster)")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="number of Ray actors (default: one per GPU of the cluster)")
    g.add_argument("--shared-dir", default=None, metavar="DIR",
                   help="a folder every Ray host mounts at the same path (put --outputs-dir inside it): workers "
                        "then read and write job files in place instead of through Ray's object store")
    g.add_argument("--sp", type=int, default=1, metavar="K",
                   help="GPUs per generation by default: one video split over K GPUs of one host (context parallel; "
                        "each user's 'GPUs per generation' in the Workers tab overrides it)")
    g.add_argument("--sp-idle", type=float, default=None, metavar="SECONDS",
                   help="how long the K processes of a split generation stay loaded without a job before they are "
                        "released (default $ICLORA_SP_IDLE_S or 600; 0: after every job)")


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """The size limits every request is checked against (pipelines.limits); the defaults suit one large GPU."""
    g = p.add_argument_group("request limits (refused at submit with a message naming the flag)")
    g.add_argument("--max-frames", type=int, default=None, metavar="N", help="frames of any video (default 257)")
    g.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="width x height of one frame (default 4194304 = 2048x2048)")
    g.add_argument("--max-volume", type=int, default=None, metavar="N",
                   help="frames x width x height (default 269484032 = 257 frames at 1024x1024)")
    g.add_argument("--max-queued-jobs", type=int, default=None, metavar="N",
                   help="jobs one user may have waiting in the queue (default 16)")


def resolve_host(args, env=None) -> str:
    """--host, else --listen -> 0.0.0.0, else GRADIO_SERVER_NAME (Hugging Face Spaces sets it to 0.0.0.0 and
    expects the app there), else 127.0.0.1 (this machine only)."""
    env = os.environ if env is None else env
    if args.host:
        return args.host
    if args.listen:
        return "0.0.0.0"
    return env.get("GRADIO_SERVER_NAME") or "127.0.0.1"


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipelines.errors import UserError
    from studio.app import launch
    from studio.context import StudioConfig

    host = resolve_host(args)
    cfg = StudioConfig(models_dir=args.models_dir, outputs_dir=args.outputs_dir, model=args.model, host=host,
                       port=args.port, auth_file=args.auth, max_file_size=args.max_file_size,
                       max_frames=args.max_frames, max_pixels=args.max_pixels, max_volume=args.max_volume,
                       max_queued_jobs=args.max_queued_jobs,
                       admins=tuple(n.strip() for n in args.admins.split(",") if n.strip()), ray=args.ray,
                       ray_workers=args.ray_workers, shared_dir=args.shared_dir, gpus_per_job=args.sp,
                       sp_idle_s=args.sp_idle)
    try:
        launch(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
