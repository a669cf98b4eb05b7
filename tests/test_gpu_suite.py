"""bench/gpu_suite.py: the one-command GPU check. Its --tiny mode runs every step on this CPU (so the script
cannot rot between GPU windows); the full-size pieces that need no GPU are checked here on the meta device."""
from __future__ import annotations

import importlib.util
import json
import math
import resource
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


suite = _module("gpu_suite")
ltx = _module("ltx23_random")


def test_tiny_suite_runs_every_step_and_reports_every_figure(tmp_path):
    """The acceptance check: `gpu_suite.py --tiny` exits 0, writes valid JSON and the markdown table, prints the
    table, and every step has every expected figure, finite, with status ok. Its CPU time (the work, whatever
    else this machine runs) stays under 2 minutes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu-results.json").read_text())
    assert results["mode"].startswith("tiny")
    assert set(results["steps"]) == {str(s) for s in suite.TITLES}
    problems = []
    for s, cases in suite.EXPECTED.items():
        got = {c["name"]: c for c in results["steps"][str(s)]["cases"]}
        for name, figures in cases.items():
            case = got.get(name)
            if case is None or case["status"] != "ok":
                problems.append(f"step {s} / {name}: {case and case['status']}")
                continue
            for f in figures:
                v = case["figures"].get(f)
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    problems.append(f"step {s} / {name}: {f} = {v!r}")
    assert not problems, "\n".join(problems) + "\n" + (tmp_path / "gpu-suite.log").read_text()[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-results.json", "gpu-results.md", "gpu-suite.log"]
    table = (tmp_path / "gpu-results.md").read_text()
    assert table in proc.stdout  # printed, not only written
    assert "| step | case | figures | status |" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 1 + sum(map(len, suite.EXPECTED.values()))
    # the two sides of step 2 really ran on the same shapes: same video tokens, theirs with an audio stream
    s1 = {c["name"]: c["figures"] for c in results["steps"]["1"]["cases"]}
    s2 = {c["name"]: c["figures"] for c in results["steps"]["2"]["cases"]}
    for name in s1:
        assert s1[name]["video_tokens"] == s2[name]["video_tokens"], name
        # the engine makes the soundtrack too (audio on by default, as ltx-pipelines): at least the same work
        assert s2[name]["audio_tokens"] > 1 and s2[name]["tflop"] >= s1[name]["tflop"] > 0
    assert s1["D=2 reference"]["video_tokens"] > s1["no reference"]["video_tokens"]
    assert cpu < 120, f"the tiny suite used {cpu:.0f} s of CPU (wall {wall:.0f} s)"


def test_full_size_stack_builds_through_the_official_path():
    """At the real size (48 layers, width 4096, the 2.3 VAE; meta device: no memory) Lightricks' builder's
    checkpoint dict loads strictly into the studio's modules through the loader's official path, and the pieces
    the suite adds (the light and the Gemma-3-12B-shaped text encoders, the x2 upsampler) have the real sizes."""
    st = ltx.build_stack("full", "meta", torch.bfloat16, text_encoder="light")
    counts = st.param_counts()
    assert 18.5e9 < counts["transformer"] < 19.5e9  # SPEC.md 1: ~19 B + ~3 B connectors
    assert 3.0e9 < counts["connectors"] < 3.4e9
    assert sum(p.numel() for p in st.official.transformer.parameters()) == counts["transformer"]
    cfg = st.pipe.transformer.config
    assert (cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim) == (48, 4096)
    assert st.pipe.text_encoder.config.text_config.hidden_size == 3840  # 49 hidden states feed the connectors
    assert 0.45e9 < counts["upsampler"] < 0.55e9
    te = ltx.build_text_encoder(ltx.scale_of("full"), "gemma12b", "meta", torch.bfloat16, 100)
    assert 12.0e9 < sum(p.numel() for p in te.parameters()) < 12.4e9  # Gemma 3 12B


def test_tiny_stack_shares_weights_between_ltx_core_and_the_studio():
    st = ltx.build_stack("tiny", "cpu", torch.float32)
    ours, theirs = st.pipe.transformer, st.official.transformer
    assert ours.transformer_blocks[1].ff.net[2].weight.data_ptr() == theirs.transformer_blocks[1].ff.net[2].weight.data_ptr()
    assert ours.proj_in.weight.data_ptr() == theirs.patchify_proj.weight.data_ptr()
    assert st.pipe.vae.decoder.conv_in.conv.weight.data_ptr() == st.official.decoder.conv_in.conv.weight.data_ptr()
    assert torch.equal(st.pipe.vae.latents_std, st.official.decoder.per_channel_statistics.get_buffer("std-of-means"))
    for m in (ours, st.pipe.vae, st.pipe.connectors, st.upsampler):
        assert all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.parametrize("isolate", [True, False])
def test_flop_count_matches_the_linear_layers_the_forward_runs(isolate):
    """transformer_flops (used for MFU) against the FLOPs of every nn.Linear a real forward runs (hooks); the
    attention core (QK^T, AV) is checked by formula. The gap is the per-sample modulations the count leaves out."""
    st = ltx.build_stack("tiny", "cpu", torch.float32)
    tr = st.pipe.transformer
    n, na, nt, (f, h, w) = 24, 3, 32, (2, 3, 4)
    s = ltx.scale_of("tiny")
    linear = [0]

    def hook(mod, inp, out):
        linear[0] += 2 * inp[0].numel() // inp[0].shape[-1] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in tr.modules() if isinstance(m, torch.nn.Linear)]
    sig = torch.full((1,), 500.0)
    with torch.no_grad():
        tr(hidden_states=torch.randn(1, n, s.latent), audio_hidden_states=torch.randn(1, na, 128),
           encoder_hidden_states=torch.randn(1, nt, s.dim), audio_encoder_hidden_states=torch.randn(1, nt, s.audio_dim),
           timestep=torch.full((1, n), 500.0), audio_timestep=sig, sigma=sig, audio_sigma=sig,
           encoder_attention_mask=torch.ones(1, nt), audio_encoder_attention_mask=torch.ones(1, nt), num_frames=f,
           height=h, width=w, fps=24.0, audio_num_frames=na,
           video_coords=tr.rope.prepare_video_coords(1, f, h, w, "cpu", fps=24.0),
           audio_coords=tr.audio_rope.prepare_audio_coords(1, na, "cpu"), isolate_modalities=isolate,
           use_cross_timestep=True, return_dict=False)
    for hd in handles:
        hd.remove()
    cfg = dict(tr.config)
    counted = ltx.transformer_flops(cfg, n, na, nt, nt, not isolate, attention_core=False)
    assert 0.93 < counted / linear[0] <= 1.0
    core = ltx.transformer_flops(cfg, n, na, nt, nt, not isolate) - counted
    d, da = s.dim, s.audio_dim
    want = 4 * (n * n * d + n * nt * d + na * na * da + na * nt * da) + (8 * n * na * da if not isolate else 0)
    assert core == cfg["num_layers"] * want


def test_a_case_that_fails_or_runs_out_of_time_is_recorded_and_the_next_one_runs(tmp_path):
    ctx = suite.Ctx(Namespace(tiny=True, out=str(tmp_path)))
    ctx.deadline = time.time() + 60
    assert ctx.case(6, "depth (DA-V2-Small)", lambda: 1 / 0) is None
    assert ctx.case(6, "pose (DWPose ONNX)", lambda: ({"fps": 3.0, "seconds": 3}, "a note")) == {"fps": 3.0, "seconds": 3.0}
    ctx.deadline = time.time() + 5
    assert ctx.case(5, "no checkpointing", lambda: {"s_per_step": 1.0}, need_s=30) is None
    rec = json.loads((tmp_path / "steps" / "step6.json").read_text())
    assert [c["status"] for c in rec["cases"]] == ["error: ZeroDivisionError: division by zero", "ok"]
    assert rec["cases"][1]["note"] == "a note"
    rec5 = json.loads((tmp_path / "steps" / "step5.json").read_text())
    assert rec5["cases"][0]["status"].startswith("timeout: skipped")
    # a process killed at its deadline: the parent gives its missing cases the reason; the table shows them all
    results = suite.collect(tmp_path, {5, 6}, {5: "timeout: the process was killed after 61 s (budget 60 s)"},
                            Namespace(tiny=True), 61.0)
    assert results["steps"]["6"]["status"] == "partial"
    assert [c["status"] for c in results["steps"]["5"]["cases"]] == [
        rec5["cases"][0]["status"], "timeout: the process was killed after 61 s (budget 60 s)"]
    table = suite.markdown(results)
    assert "| 6 control preprocessors | pose (DWPose ONNX) | fps 3.00 · seconds 3.00 (a note) | ok |" in table
    assert table.count("timeout") == 2
