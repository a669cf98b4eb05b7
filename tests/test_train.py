"""Issue 7 (pipelines side): cache, trainer, resume, export, CLI — on the tiny model and a tiny synthetic set.

The dataset: 4 clips of the same textured "subject" moving in different directions (64x64, 9 frames). The model
is a FRESH tiny model per module (training injects a PEFT adapter; the session `tiny_model` stays untouched).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import textured_frames

MOTIONS = [(1.0, 0.5), (-1.0, 0.5), (0.5, -1.0), (-0.5, -0.5)]
SMALL = dict(rank=4, alpha=4.0, gradient_checkpointing=False, warmup_steps=0, target_area=64 * 64, max_frames=9, checkpoint_every=0,
             sample_every=0, validation_width=64, validation_height=64, validation_frames=9, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    import imageio_ffmpeg

    for i, motion in enumerate(MOTIONS):  # the same texture (the "subject") moving in 4 directions
        path = d / f"clip{i}.mp4"
        data = textured_frames(9, 64, 64, seed=11, motion=motion)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-s", "64x64", "-r", "24", "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
                str(path)], input=data.tobytes(), check=True)
        (d / f"clip{i}.txt").write_text("subj a textured subject moving")
    return d


@pytest.fixture(scope="module")
def fresh_model():
    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec

    return ModelCache().get(tiny_spec())


@pytest.fixture(scope="module")
def cached(dataset, fresh_model, tmp_path_factory):
    from pipelines.training.cache import preprocess
    from pipelines.training.dataset import scan_dataset
    from pipelines.training.recipe import Recipe
    from pipelines.training.references import assign_references

    recipe = Recipe(**SMALL).validate()
    report = scan_dataset(dataset, trigger="subj", target_area=recipe.target_area, max_frames=9, face_detector=None)
    refs = assign_references(report, seed=0, detector=None)
    cache_dir = tmp_path_factory.mktemp("cache")
    seen = []
    items = preprocess(report, refs, fresh_model, cache_dir, recipe, on_item=lambda i, n, name, skip: seen.append(skip))
    again = []
    preprocess(report, refs, fresh_model, cache_dir, recipe, on_item=lambda i, n, name, skip: again.append(skip))
    return items, recipe, seen, again


def _recipe(**kw):
    from pipelines.training.recipe import Recipe

    return Recipe(**{**SMALL, **kw}).validate()


def test_cache_contents_and_resume(cached):
    from pipelines.training.cache import load_item

    items, _, seen, again = cached
    assert seen == [False] * 4 and again == [True] * 4  # second pass skips every cached item
    t = load_item(items[0])
    assert tuple(t["latents"].shape) == (16, 2, 2, 2)  # 64x64x9 -> C16 x F2 x 2 x 2
    assert tuple(t["ref_latents"].shape) == (16, 1, 2, 2)  # the reference is a still: one latent frame
    assert t["prompt_embeds"].shape[0] == t["prompt_mask"].shape[0]
    assert np.isfinite(t["latents"].numpy()).all()


def test_sigma_sampler_shape():
    import torch

    from pipelines.training.trainer import sample_sigma, shift_mu

    assert shift_mu(1024) == pytest.approx(0.95) and shift_mu(4096) == pytest.approx(2.05)
    g = torch.Generator().manual_seed(0)
    small = np.array([sample_sigma(1024, g, 0.0) for _ in range(2000)])
    big = np.array([sample_sigma(4096, g, 0.0) for _ in range(2000)])
    assert 0 < small.min() and big.max() <= 1
    assert big.mean() > small.mean() + 0.05  # more tokens -> more noise


def test_target_modules_video_branch_only(fresh_model):
    import re

    from pipelines.training.trainer import TARGET_MODULES

    names = [n for n, _ in fresh_model.pipe.transformer.named_modules()]
    hit = [n for n in names if re.fullmatch(TARGET_MODULES, n)]
    assert len(hit) == 2 * 10  # 2 layers x (4 attn1 + 4 attn2 + 2 ff)
    assert not [n for n in hit if "audio" in n]


def test_loss_falls(cached, fresh_model, tmp_path):
    from pipelines.training.trainer import Trainer

    items, _, _, _ = cached
    # lr 1e-2 (not the recipe's 1e-4): the tiny random model needs a bigger step to move within 50 CPU steps
    recipe = _recipe(lr=1e-2, rank=8, alpha=8.0, gradient_checkpointing=True)
    res = Trainer(fresh_model, items, recipe, tmp_path / "run").train(50)
    losses = np.array(res.losses)
    assert len(losses) == 50 and np.isfinite(losses).all()
    first, last = losses[:10].mean(), losses[-10:].mean()
    print(f"loss first10={first:.4f} last10={last:.4f} ratio={last / first:.3f}")
    assert last < 0.7 * first
    # the adapter is removed after training: the fresh model is clean again for the next test
    assert not any("lora_" in n for n, _ in fresh_model.pipe.transformer.named_parameters())


def test_kill_and_resume_gives_identical_losses(cached, fresh_model, tmp_path):
    from pipelines.training.trainer import TrainCallbacks, Trainer, read_losses

    items, _, _, _ = cached
    recipe = _recipe(lr=1e-3, checkpoint_every=3, first_frame_p=0.5)
    full = Trainer(fresh_model, items, recipe, tmp_path / "a").train(6)

    class Killed(Exception):
        pass

    def kill(step, total, loss, sps):
        if step == 5:  # after checkpoint 3 and two more logged steps
            raise Killed

    with pytest.raises(Killed):
        Trainer(fresh_model, items, recipe, tmp_path / "b", callbacks=TrainCallbacks(progress=kill)).train(6)
    assert [r["step"] for r in read_losses(tmp_path / "b")] == [1, 2, 3, 4, 5]
    resumed = Trainer(fresh_model, items, recipe, tmp_path / "b").train(6, resume=True)
    assert resumed.losses == full.losses[3:]  # bit-identical steps 4-6
    assert [r["step"] for r in read_losses(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in read_losses(tmp_path / "b")] == full.losses


def test_export_checkpoint_sample_and_engine(cached, fresh_model, tiny_engine, tmp_path):
    from pipelines.models.lora import inspect_lora
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec
    from pipelines.training.trainer import Trainer

    items, _, _, _ = cached
    recipe = _recipe(lr=3e-3, alpha=8.0, checkpoint_every=4, sample_every=4)  # alpha != rank: folding matters
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    res = Trainer(fresh_model, items, recipe, run, trigger="subj").train(4)
    ck = run / "checkpoints" / "step_00004"
    assert (ck / "sample.mp4").exists() and (ck / "side_by_side.mp4").exists() and (ck / "state.pt").exists()
    lora = run / "lora.safetensors"
    info = inspect_lora(lora)
    assert info["finite"] and info["rank"] == 4 and info["reference_downscale_factor"] == 1 and info["ic_lora"]
    assert info["metadata"]["steps"] == "4" and info["metadata"]["trigger_word"] == "subj"
    sanity = json.loads((run / "lora.sanity.json").read_text())
    assert sanity["ok"] and sanity["nonzero_lora_B_share"] > 0.5 and sanity["modules"] == 20

    ref = run / "validation" / "reference.png"
    base = dict(prompt="a textured subject", width=64, height=64, frames=9, seed=1, controls=[ControlInput(path=str(ref))])
    out0 = tiny_engine.generate(GenerateRequest(**base), write=False, previews=False).frames
    out1 = tiny_engine.generate(GenerateRequest(**base, loras=[LoraSpec(str(lora), 1.0)]), write=False,
                                previews=False).frames
    diff = np.abs(out0.astype(int) - out1.astype(int)).mean()
    assert diff > 0.5, diff
    assert res.samples and res.samples[0].exists()


def test_alpha_folded_matches_peft_scale(fresh_model):
    """Official loader math (W + B_folded @ A) == PEFT's (W + alpha/r * B @ A)."""
    import torch

    from pipelines.training.export import official_tensors

    a, b = torch.randn(4, 8), torch.randn(6, 4)
    t = official_tensors({"transformer_blocks.0.attn1.to_q": (a, b)}, rank=4, alpha=8.0)
    folded = t["diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight"] @ t[
        "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    assert torch.allclose(folded, 2.0 * b @ a)


def test_recipe_and_request_validation(dataset, tmp_path):
    from pipelines.errors import UserError
    from pipelines.training.recipe import TrainRequest, load_preset

    face = load_preset("face")
    assert (face.rank, face.alpha, face.lr, face.checkpoint_every) == (32, 32.0, 1e-4, 250)
    req = TrainRequest(data=str(dataset), out=str(tmp_path / "r"), overrides={"steps": 10})
    assert TrainRequest.from_dict(json.loads(json.dumps(req.to_dict()))).recipe().steps == 10
    with pytest.raises(UserError, match="unknown recipe override"):
        TrainRequest(data=str(dataset), out="x", overrides={"rnak": 3}).validate()
    with pytest.raises(UserError, match="rank"):
        TrainRequest(data=str(dataset), out="x", overrides={"rank": 0}).validate()
    with pytest.raises(UserError, match="does not exist"):
        TrainRequest(data=str(tmp_path / "nope"), out="x").validate()


def test_cli_bad_data_dir_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipelines", "train", "--preset", "face", "--data",
                        str(tmp_path / "missing"), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    r = subprocess.run([sys.executable, "-m", "pipelines", "train", "--data", str(empty), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_two_processes_share_one_run(dataset, tmp_path):
    """`torchrun --nproc_per_node 2 -m pipelines train ...` (the accelerate path; gloo on this CPU box): rank 0
    fills the cache and the other rank finds it filled, the ranks train on different clips, one set of files."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")  # loopback only
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), "-m", "pipelines", "train", "--data", str(dataset),
                        "--out", str(run), "--steps", "4", "--checkpoint-every", "2", "--sample-every", "0",
                        "--rank", "4", "--alpha", "4", "--lr", "1e-3"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("(cached)") == 4  # the second rank read what rank 0 encoded
    import re

    losses = re.findall(r"step 1/4 loss ([0-9.]+)", r.stderr)  # the ranks' lines may interleave on one pipe
    assert len(losses) == 2 and losses[0] != losses[1], r.stderr[-2000:]  # two ranks, two different clips
    logged = [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # rank 0 alone writes the log, checkpoints and the export
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00002", "step_00004"]
    from pipelines.models.lora import read_lora

    assert read_lora(run / "lora.safetensors").rank == 4


def test_training_adapter_is_on_after_a_generation_turned_adapters_off():
    """A generation without LoRAs turns every adapter layer of the shared model off; a training started next on
    that model must still train through its adapter (it failed with 'element 0 of tensors does not require grad'
    when a Union generation ran before a training in the same server)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec
    from pipelines.training.trainer import inject_lora

    tr = ModelCache().get(tiny_spec()).pipe.transformer  # a fresh model: nothing shared with other tests
    tr.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), adapter_name="from_a_generation")
    tr.disable_adapters()  # what the engine's run without LoRAs does to the adapters the model holds
    inject_lora(tr, rank=4, alpha=4, seed=0)
    layers = [m for m in tr.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.disable_adapters for m in layers)
