"""Workers tab: where jobs run. Each worker (the studio's own process, or each Ray actor / GPU) with its host,
GPUs, state, resident model, the job it runs and the memory in use; below, your queue with the worker each of
your jobs runs on. Another user's job shows as "another user's <kind>": job ids stay private.

Read from ctx.jobs.workers(viewer) (the executor's view, refreshed by its monitor) and ctx.jobs.list(owner);
polled with a gr.Timer. "Drain" (finish the current job, then take the worker out of service) is for the
machine's owner: the one local user without --auth, the --admins with it; a Ray node drained with
`ray drain-node` is honoured the same way.
"""
from __future__ import annotations

import gradio as gr

from studio.ui import guard

TITLE = "Workers"
POLL_S = 2.0
WORKER_HEADERS = ["worker", "host", "GPUs", "state", "model", "job", "memory", "restarts", "files"]
QUEUE_HEADERS = ["job", "kind", "status", "ahead", "worker", "progress %", "message"]


def _gb(n) -> str:
    return f"{n / 1e9:.1f}"


def memory_text(mem: dict | None) -> str:
    """'12.3 / 80.0 GB (reserved 14.1)' on a GPU, 'RSS 1.2 GB' on a CPU, '' when unknown."""
    if not mem:
        return ""
    if mem.get("allocated") is not None and mem.get("total"):
        return f"{_gb(mem['allocated'])} / {_gb(mem['total'])} GB (reserved {_gb(mem.get('reserved') or 0)})"
    return f"RSS {_gb(mem['rss'])} GB" if mem.get("rss") else ""


def job_text(jobs: list[dict]) -> str:
    parts = []
    for j in jobs or []:
        if j.get("id"):
            parts.append(f"{j['id'][:8]} · {j.get('kind')}")
        else:
            parts.append(f"another user's {j.get('kind')}")
    return ", ".join(parts)


def worker_rows(ctx, owner: str) -> list[list]:
    rows = []
    for w in ctx.jobs.workers(viewer=owner):
        gpus = w.get("gpus")
        rows.append([w.get("name"), w.get("host") or "", ",".join(gpus) if gpus else ("-" if gpus == [] else ""),
                     w.get("state") + (f" ({w['error']})" if w.get("error") and w.get("state") != "idle" else ""),
                     w.get("model") or "", job_text(w.get("jobs")), memory_text(w.get("memory")),
                     w.get("restarts") or 0, w.get("files") or ""])
    return rows


def queue_rows(ctx, owner: str) -> list[list]:
    """The owner's queued and running jobs, oldest first: how many run or wait before each, where it runs."""
    rows = []
    for j in reversed(ctx.jobs.list(owner, 200, active_only=True)):
        ahead = ctx.jobs.position(j.id, owner) if j.status.value == "queued" else ""
        rows.append([j.id[:8], j.kind, j.status.value, ahead, j.worker or "", round(100 * float(j.progress or 0)),
                     j.message or ""])
    return rows


def summary(ctx) -> str:
    ex = ctx.jobs.executor
    if ex.name == "in-process":
        return ("GPU jobs run **in this process**, one at a time. To use every GPU of this box or several hosts, "
                "start the studio with `--ray auto` or `--ray ray://HEAD:10001` (see README, *Scale out*).")
    rows = ex.workers()
    busy = sum(1 for w in rows if w.get("state") == "busy")
    return (f"GPU jobs run on **Ray**: {len(rows)} worker(s), {busy} busy. A job goes to a free worker, preferring "
            "one that already holds its model.")


def view(ctx, owner: str):
    return summary(ctx), worker_rows(ctx, owner), queue_rows(ctx, owner)


def set_gpus(ctx, owner: str, value) -> str:
    """The owner's "GPUs per generation": their generations (from any tab or the API, unless a request says
    otherwise) run over that many GPUs of one host, one video split across them (context parallel)."""
    from pipelines.errors import UserError

    try:
        k = int(value)
    except (TypeError, ValueError):
        raise UserError("GPUs per generation must be a whole number") from None
    if not 1 <= k <= 64:
        raise UserError("GPUs per generation must be between 1 and 64")
    from studio.kinds.generate import check_gpus

    check_gpus(ctx, k)  # in this process: refused now when this host has fewer
    ctx.prefs.setdefault(owner, {})["gpus"] = k
    if k == 1:
        return "Your generations run on one GPU each."
    return (f"Your generations now run over {k} GPUs of one host each (one video split across them, the same "
            "frames as on one GPU). With Ray, a job asking for more GPUs than a host has free is refused when it "
            "is dispatched.")


def build(ctx):
    from studio.kinds.generate import gpus_per_job

    info = gr.Markdown(summary(ctx), elem_id="workers-summary")
    with gr.Row():
        gpus = gr.Number(value=1, precision=0, minimum=1, maximum=64, scale=1, elem_id="workers-gpus",
                         label="GPUs per generation (yours, from every tab)")
        gpus_note = gr.Markdown(elem_id="workers-gpus-note")
    workers = gr.Dataframe(headers=WORKER_HEADERS, value=[], interactive=False, wrap=True, label="Workers",
                           elem_id="workers-table")
    queue = gr.Dataframe(headers=QUEUE_HEADERS, value=[], interactive=False, wrap=True,
                         label="Your queue (where each job runs)", elem_id="workers-queue")
    with gr.Row(visible=ctx.jobs.executor.name != "in-process"):
        name = gr.Textbox(label="Worker to drain (it finishes its job, then stops)", scale=3, elem_id="workers-name")
        drain = gr.Button("Drain", scale=1, elem_id="workers-drain")
    note = gr.Markdown(elem_id="workers-note")
    timer = gr.Timer(POLL_S)
    shown = gr.State(False)

    def poll(was_shown, request: gr.Request):
        owner = ctx.owner(request)
        mine = gr.skip() if was_shown else gpus_per_job(ctx, owner)  # once: never over what is being typed
        return (*view(ctx, owner), mine, True)

    timer.tick(guard(poll), shown, [info, workers, queue, gpus, shown], api_visibility="private",
               show_progress="hidden")

    def change_gpus(value, request: gr.Request):
        return set_gpus(ctx, ctx.owner(request), value)

    gpus.input(guard(change_gpus), gpus, gpus_note, api_visibility="private")

    def do_drain(worker: str, request: gr.Request):
        from pipelines.errors import UserError

        if not ctx.config.is_admin(ctx.owner(request)):
            raise UserError("draining a worker is for the studio's admins (--admins), or `ray drain-node` on the "
                            "cluster")
        if not ctx.jobs.drain((worker or "").strip()):
            raise UserError(f"no worker named {worker!r}")
        return f"{worker} is draining: it finishes its current job, then stops."

    drain.click(guard(do_drain), name, note, api_visibility="private")
    return {"workers": workers, "queue": queue, "info": info}
