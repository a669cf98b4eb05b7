"""Face trainer tab (issue 7, UI side): the "train" job through the job system, stop / continue from the last
checkpoint, the loss plot and checkpoint gallery data, "use in generator" — and the whole flow in a browser.

The job runs on the session studio's tiny model (the same model cache the generator uses: training must give
it back whole, which the generation after training checks)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import UserError
from tests.conftest import screenshot
from tests.helpers import textured_frames

MOTIONS = [(1.0, 0.5), (-1.0, 0.5), (0.5, -1.0), (-0.5, -0.5)]
SMALL = {"steps": 4, "checkpoint_every": 2, "sample_every": 2, "rank": 4, "alpha": 4.0, "lr": 1e-3,
         "warmup_steps": 0, "target_area": 64 * 64, "max_frames": 9, "gradient_checkpointing": False,
         "validation_width": 64, "validation_height": 64, "validation_frames": 9}


def make_clips(folder: Path, n: int = 4) -> list[Path]:
    import imageio_ffmpeg

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, motion in enumerate(MOTIONS[:n]):
        path = folder / f"clip{i}.mp4"
        data = textured_frames(9, 64, 64, seed=11, motion=motion)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt",
                        "rgb24", "-s", "64x64", "-r", "24", "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt",
                        "yuv420p", str(path)], input=data.tobytes(), check=True)
        (folder / f"clip{i}.txt").write_text("subj a textured subject moving")
        out.append(path)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("train-clips"))


def train_request(data: str, **over) -> dict:
    return {"data": data, "preset": "face", "model": "tiny", "trigger": "subj", "overrides": dict(SMALL, **over),
            "reference_overrides": {}, "validation_reference": None}


def test_train_job_stop_continue_and_hand_off(studio_server, clips, tmp_path):
    from studio.kinds import train as kind
    from studio.tabs import train as tab

    _, ctx, _ = studio_server
    owner = "local"
    data, report, gallery, names = tab.check_dataset(ctx, owner, [str(p) for p in clips] +
                                                     [str(clips[0].with_suffix(".txt"))], "subj", "face")
    assert Path(data).is_dir() and Path(data).is_relative_to(ctx.outputs_dir / owner)  # staged in the user's folder
    assert len(names) == 4 and len(gallery) == 4 and all(Path(p).is_file() for p, _ in gallery)
    assert "clip" in report

    # the user replaces clip2's reference with an image of their own; a non-image is refused by name
    import cv2

    face = tmp_path / "my face.jpg"
    cv2.imwrite(str(face), np.full((80, 64, 3), 180, np.uint8))
    gallery2, ov = tab.replace_reference(ctx, owner, data, "clip2.mp4", str(face), {}, "subj", "face")
    assert Path(ov["clip2.mp4"]).name == "user_clip2.png" and Path(ov["clip2.mp4"]).is_file()
    assert any("clip2.mp4" in cap and "user_clip2.png" in cap for _, cap in gallery2)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(UserError, match="notes.jpg is not a readable image"):
        tab.replace_reference(ctx, owner, data, "clip1.mp4", str(tmp_path / "notes.jpg"), ov, "subj", "face")
    assert not (Path(data) / "references" / "user_clip1.png").exists()

    # a run of 6 steps that the user stops after its first checkpoint (control file, as the Stop button does)
    jid = ctx.jobs.submit(owner, "train", train_request(data, steps=6))
    deadline = time.time() + 300
    while time.time() < deadline and not kind.checkpoints(kind.run_dir_of(ctx.jobs.get(jid, owner).out_dir)):
        time.sleep(0.2)
    assert "Stopping" in kind.control_file(ctx, jid, owner, "stop")
    job = ctx.jobs.wait(jid, timeout=300)
    assert job.status.value == "done", job.error
    first = job.result
    assert first["stopped"] and first["step"] < 6
    run = Path(first["run_dir"])
    assert (run / "lora.safetensors").is_file() and (run / "loss.jsonl").is_file()

    # the view the tab polls: progress, loss frame, gallery of samples, checkpoint choices
    prog, plot, gal, choices, note, sig = tab.run_view(ctx, jid, owner, None)
    # a stopped run reads "stopped at step k/6" at k/6, not "done 100%" (issue 13)
    assert 'data-status="stopped"' in prog and f"stopped at step {first['step']}/6" in prog and "100%" not in prog
    assert plot.count('class="pt-loss"') == first["step"] and 'data-series="smoothed"' in plot
    frame = tab.loss_frame(run)
    assert len(frame[frame.series == "loss"]) == first["step"]
    assert gal and all(Path(p).name == "sample.mp4" for p, _ in gal)
    assert choices["value"].endswith("lora.safetensors") and "stopped" in note

    # continue: a new job resumes the same run folder from its last checkpoint and finishes all 6 steps
    jid2 = kind.continue_run(ctx, jid, owner)
    job2 = ctx.jobs.wait(jid2, timeout=300)
    assert job2.status.value == "done", job2.error
    assert job2.result["run_dir"] == str(run) and job2.result["step"] == 6 and not job2.result["stopped"]
    steps = [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # one continuous curve
    cks = kind.checkpoints(run)
    assert [c["step"] for c in cks][-1] == 6

    # "use in generator": the checkpoint and the run's reference still, checked to be the user's own files
    d = tab.hand_off(ctx, jid2, owner, cks[-1]["lora"])
    assert Path(d["path"]).is_file() and d["reference_image"].endswith("reference.png")
    with pytest.raises(UserError):
        tab.hand_off(ctx, jid2, owner, "/etc/passwd")
    with pytest.raises(UserError, match="not running"):
        kind.control_file(ctx, jid2, owner, "sample_now")

    # the shared model came back whole: a generation with the trained LoRA and the reference runs after training
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    req = GenerateRequest(prompt="subj portrait", width=64, height=64, frames=9,
                          controls=[ControlInput(path=d["reference_image"])], loras=[LoraSpec(path=d["path"])])
    gen = ctx.jobs.wait(ctx.jobs.submit(owner, "generate", req.to_dict()), timeout=300)
    assert gen.status.value == "done", gen.error


def test_bad_uploads_are_refused_with_a_message(studio_server, tmp_path, clips):
    from pipelines.errors import UserError
    from studio.kinds import train as kind

    _, ctx, _ = studio_server
    with pytest.raises(UserError, match="no clips"):
        kind.stage_dataset(ctx, "local", [])
    bad = tmp_path / "notes.docx"
    bad.write_text("x")
    before = set((Path(ctx.outputs_dir) / "local" / "datasets").glob("*"))
    with pytest.raises(UserError, match="notes.docx"):
        kind.stage_dataset(ctx, "local", [str(clips[0]), str(bad)])  # refused before anything is copied
    assert set((Path(ctx.outputs_dir) / "local" / "datasets").glob("*")) == before  # nothing half-staged
    # a job whose data lies outside the user's folders is refused when it is submitted
    with pytest.raises(UserError, match="data: .*outside"):
        ctx.submit("local", "train", train_request("/etc"))


def test_browser_train_from_upload_to_generator(studio_server, page, clips):
    url, ctx, _ = studio_server
    page.goto(url)
    page.get_by_role("tab", name="Face trainer").click()
    page.locator("#train-files input[type=file]").set_input_files([str(p) for p in clips])
    page.wait_for_timeout(1500)
    page.locator("#train-check").click()
    page.locator("#train-report").get_by_text("clip0.mp4").first.wait_for(timeout=120_000)
    page.locator("#train-steps input").fill("4")
    page.locator("#train-every input").fill("2")
    page.locator("#train-start").click()
    page.locator('#train-progress [data-status="done"]').wait_for(timeout=400_000)
    page.locator("#train-samples img, #train-samples video").first.wait_for(timeout=30_000)
    screenshot(page, "train-tab-done")
    page.locator("#train-use").click()
    page.locator("#train-note").get_by_text("Sent").wait_for(timeout=30_000)
    page.get_by_role("tab", name="Union control").click()
    page.get_by_text("Using trained IC-LoRA").wait_for(timeout=30_000)
    page.locator("#union-go").click()  # generate with the trained checkpoint and its reference still
    page.locator('#union-progress [data-status="done"]').wait_for(timeout=120_000)
    page.locator("#union-video video").wait_for(timeout=30_000)
    screenshot(page, "train-handoff-union")
