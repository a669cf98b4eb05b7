"""Job kind "download" (light lane): the official LTX-2.3 weights from the Hugging Face Hub into the models folder.

The job runs `python -m pipelines models download --progress json` in a child process and relays its JSON lines
as progress: the studio process itself stays offline (HF_HUB_OFFLINE=1), only that child talks to the Hub, and a
cancel just stops the child (the `.part` file stays and the next download continues it). A token typed in the
Models tab is handed to that child in memory (`keep_token`): the job request, which the job store persists,
carries only a one-time handle. Plan first (`plan_only`), then the download; pipelines.models.download does both.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

from pipelines.errors import UserError
from pipelines.models.registry import BY_KEY, VARIANTS

KIND = "download"
ROOT = Path(__file__).resolve().parents[2]
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TOKENS: dict[str, str] = {}  # one-time handle -> token, this process only
_TOKENS_LOCK = threading.Lock()


def keep_token(token: str | None) -> str | None:
    """Hold a token in memory for one download job; the job request carries only the returned handle."""
    if not token:
        return None
    ref = secrets.token_hex(8)
    with _TOKENS_LOCK:
        _TOKENS[ref] = token
    return ref


def run_download_job(request: dict, jobctx, models_dir) -> dict:
    """Job 'download' (light lane). request: {"variant": "distilled"|"dev"|"fp8"|None, "files": [catalogue keys],
    "plan_only": bool, "token_ref": handle from keep_token or None}. Runs `python -m pipelines models download`
    in a child process without the offline switch, relays its JSON progress; returns {"plan": ..., "files": ...}."""
    if not models_dir:
        raise UserError("no models folder: start the studio with --models-dir (or ICLORA_MODELS_DIR) to download")
    with _TOKENS_LOCK:
        token = _TOKENS.pop(request.get("token_ref") or "", None)
    cmd = [sys.executable, "-m", "pipelines", "models", "download", "--dir", str(models_dir), "--progress", "json"]
    if request.get("variant"):
        cmd += ["--variant", str(request["variant"])]
    for key in request.get("files") or []:
        cmd += ["--file", str(key)]
    if request.get("plan_only"):
        cmd.append("--plan")
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if token:
        env["HF_TOKEN"] = token
    jobctx.progress(0.0, "asking the Hub for the file list")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def watch():  # a cancel stops the child at once, even while it waits on the network
        while not stop.wait(0.3):
            if jobctx.cancelled and proc.poll() is None:
                proc.terminate()
                return

    threading.Thread(target=watch, daemon=True).start()
    result: dict = {}
    try:
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if ev.get("event") == "plan":
                result["plan"] = {k: v for k, v in ev.items() if k != "event"}
                n = sum(1 for f in ev["files"] if not f["complete"])
                jobctx.progress(0.0, f"plan: {n} of {len(ev['files'])} files to get, {ev['needed_bytes'] / 1e9:.1f} GB "
                                     f"({ev['free_bytes'] / 1e9:.0f} GB free)")
            elif ev.get("event") == "progress":
                total = ev["total"] or 1
                jobctx.progress(min(0.999, ev["done"] / total),
                                f"{ev['done'] / 1e9:.2f} / {total / 1e9:.2f} GB · {ev['message']}")
            elif ev.get("event") == "done":
                result["files"] = ev["files"]
        err = proc.stderr.read()
        rc = proc.wait()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    jobctx.raise_if_cancelled()
    if rc != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        msg = next((ln[len("error: "):] for ln in reversed(lines) if ln.startswith("error: ")), None)
        raise UserError(msg or f"the download stopped (exit code {rc}): {lines[-1] if lines else 'no message'}")
    jobctx.progress(1.0, "plan ready" if request.get("plan_only") else "downloaded")
    return result


def check_download(ctx, owner: str, request: dict) -> dict:
    """At submit: a models folder to download into, a known set and known files (refused before queueing)."""
    if not ctx.models_dir:
        raise UserError("no models folder: start the studio with --models-dir (or ICLORA_MODELS_DIR) to download")
    if not ctx.config.is_admin(owner):
        raise UserError("downloading weights changes the models folder every user shares: on this studio only its "
                        "admins may (the server starts with `--admins NAME`); ask one of them")
    if not isinstance(request, dict):
        raise UserError("a download request is a dict")
    variant = request.get("variant")
    if variant is not None and variant not in VARIANTS:
        raise UserError(f"unknown set {variant!r}; choose one of {', '.join(VARIANTS)}")
    unknown = [k for k in request.get("files") or [] if k not in BY_KEY]
    if unknown or (variant is None and not request.get("files")):
        raise UserError(f"unknown files {unknown}" if unknown else "nothing to download: choose a set or files")
    return request


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        models_dir = ctx.models_dir
        ctx.jobs.register(KIND, lambda req, jc: run_download_job(req, jc, models_dir), lane="light",
                          check=lambda owner, req: check_download(ctx, owner, req))


def download_request(variant: str, files: list[str] | None, token: str | None, plan_only: bool) -> dict:
    if variant not in VARIANTS:
        raise UserError(f"choose one of {', '.join(VARIANTS)}")
    extra = [k for k in (files or []) if k in BY_KEY and k not in VARIANTS[variant]]
    return {"variant": variant, "files": extra, "plan_only": bool(plan_only), "token_ref": keep_token(token)}
