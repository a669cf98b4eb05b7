"""Prompt enhancer (issue 15.3): the loaded model's Gemma rewrites a prompt, as a light job that never waits behind
the GPU queue, sharing the text encoder with generation one forward pass at a time."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.sampler.enhance import (I2V_SYSTEM_PROMPT, T2V_SYSTEM_PROMPT, TINY_NOTICE, EnhanceRequest,
                                       _prompt_ids, clean_response, enhance_prompt, text_encoder_lock)


def test_enhancer_returns_text_on_the_tiny_model(tiny_model, tmp_path, make_video):
    import cv2

    r1 = enhance_prompt(tiny_model, EnhanceRequest(prompt="a dog running in the city", max_new_tokens=24, seed=1))
    assert isinstance(r1.text, str) and r1.text and r1.tokens > 0 and not r1.used_image
    assert r1.notice == TINY_NOTICE and "random" in r1.notice  # the tiny model's words are noise: said so
    again = enhance_prompt(tiny_model, EnhanceRequest(prompt="a dog running in the city", max_new_tokens=24, seed=1))
    assert again.text == r1.text  # seeded sampling
    other = enhance_prompt(tiny_model, EnhanceRequest(prompt="a dog running in the city", max_new_tokens=24, seed=2))
    assert other.text != r1.text
    img = tmp_path / "frame.png"
    cv2.imwrite(str(img), np.full((64, 96, 3), 90, np.uint8))
    r2 = enhance_prompt(tiny_model, EnhanceRequest(prompt="a dog running", image=str(img), max_new_tokens=16))
    assert r2.used_image and r2.text
    clip = make_video(frames=9)
    r3 = enhance_prompt(tiny_model, EnhanceRequest(prompt="a dog running", image=str(clip), frame=4, max_new_tokens=8))
    assert r3.used_image


def test_prompt_layout_and_cleaning(tiny_model):
    tok = tiny_model.pipe.tokenizer
    import torch

    ids = _prompt_ids(tok, "the system", "the user", torch.tensor([55, 55]))
    assert ids[0, 0].item() == tok.bos_token_id and ids[0].tolist().count(55) >= 2
    assert "Style: <style>" in T2V_SYSTEM_PROMPT and "first frame" in I2V_SYSTEM_PROMPT
    assert clean_response('  "\u201cStyle: calm\u201d \n  a \u2018dog\u2019  runs') == "Style: calm\" a 'dog' runs"
    assert clean_response("...") == "..."


def test_requests_are_checked():
    with pytest.raises(UserError, match="empty"):
        EnhanceRequest(prompt="  ").validate()
    with pytest.raises(UserError, match="max_new_tokens"):
        EnhanceRequest(prompt="x", max_new_tokens=0).validate()
    with pytest.raises(UserError, match="unknown enhance setting"):
        EnhanceRequest.from_dict({"prompt": "x", "style": "noir"})
    assert EnhanceRequest.from_dict({"prompt": "x", "seed": "3"}).seed == 3


def test_offload_tiers_are_refused(tiny_model):
    te = tiny_model.pipe.text_encoder
    te._hf_hook = object()
    try:
        with pytest.raises(UserError, match="offload"):
            enhance_prompt(tiny_model, EnhanceRequest(prompt="x", max_new_tokens=2))
    finally:
        del te._hf_hook


def test_a_generation_waits_at_most_one_token_step(tiny_model):
    """The enhancer holds the text-encoder lock for one forward pass at a time: while it writes 40 slowed tokens,
    another user of the encoder (the engine's prompt encoding) gets the lock within about one step; and the
    enhancer itself waits while the other holds it."""
    te = tiny_model.pipe.text_encoder
    step_s = 0.05
    handle = te.register_forward_pre_hook(lambda m, a: time.sleep(step_s))
    lock = text_encoder_lock(tiny_model)
    out = {}
    try:
        t = threading.Thread(target=lambda: out.setdefault("r", enhance_prompt(
            tiny_model, EnhanceRequest(prompt="a dog", max_new_tokens=40, temperature=0.0))))
        t.start()
        time.sleep(0.3)
        waits = []
        for _ in range(3):
            asked = time.perf_counter()
            with lock:
                waits.append(time.perf_counter() - asked)
                time.sleep(0.2)  # "encoding a prompt" while the enhancer waits
            time.sleep(0.1)
        t.join(timeout=60)
    finally:
        handle.remove()
    r = out["r"]
    assert not t.is_alive() and 0 < r.tokens <= 40  # finished (an end token may come early)
    step = max(r.step_seconds)
    print(f"generation side waited {max(waits) * 1000:.0f} ms at most (longest step {step * 1000:.0f} ms, whole "
          f"enhancement {r.seconds:.1f} s); enhancer waited {max(r.lock_waits):.2f} s")
    assert max(waits) <= step + 0.1  # one step (plus thread scheduling), never the whole enhancement
    assert r.seconds > 5 * step
    assert max(r.lock_waits) >= 0.15  # and the enhancer did wait for the other side


def test_enhance_job_never_waits_behind_the_gpu_queue(tmp_path):
    """A GPU job is running (and another queued); an enhance job submitted now finishes while they wait."""
    from studio.context import StudioConfig, build_context

    ctx = build_context(StudioConfig(outputs_dir=str(tmp_path / "out")))
    release = threading.Event()
    ctx.jobs.register("block", lambda req, jc: release.wait(60) and {}, lane="gpu")
    try:
        g1 = ctx.jobs.submit("alice", "block", {})
        g2 = ctx.jobs.submit("alice", "block", {})
        t0 = time.monotonic()
        from studio.kinds.enhance import enhance_now

        res = enhance_now(ctx, "alice", {"prompt": "a dog on a street", "max_new_tokens": 12}, timeout=120)
        took = time.monotonic() - t0
        assert res["text"] and res["notice"] == TINY_NOTICE and res["tokens"] > 0
        assert ctx.jobs.get(g1, "alice").status.value == "running"
        assert ctx.jobs.get(g2, "alice").status.value == "queued"
        print(f"enhanced in {took:.1f} s while the GPU lane was busy")
        with pytest.raises(UserError, match="empty"):
            ctx.submit("alice", "enhance", {"prompt": ""})  # refused at submit
    finally:
        release.set()
        ctx.jobs.shutdown(timeout=10)


def test_cli_enhance(capsys):
    from pipelines.cli import main

    assert main(["enhance", "--prompt", "a cat", "--max-new-tokens", "6"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["text"] and got["notice"] == TINY_NOTICE
    assert main(["enhance", "--prompt", "a cat", "--image", "nope.png"]) == 2
