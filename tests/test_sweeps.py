"""A/B and sweeps (issue 15.2): variants of one request, the grid mp4, and a 3-strength sweep on the tiny model
whose pairwise differences order with the strengths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.grid import compose_grid, grid_layout, grid_size, label_height, write_grid
from pipelines.sweeps import SweepRequest, without_ic_lora


def _req(control="c.mp4", **kw):
    r = {"prompt": "a dog running", "width": 96, "height": 64, "frames": 9, "seed": 3,
         "controls": [{"path": control, "strength": 1.0}] if control else []}
    r.update(kw)
    return r


def _lora(path, meta):
    import torch
    from safetensors.torch import save_file

    save_file({"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 32),
               "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 2)}, str(path),
              metadata=meta)
    return str(path)


def test_variants_per_axis(tmp_path):
    s = SweepRequest(_req(), "attention_strength", [0.5, 0.8, 1.0])
    vs = s.variants()
    assert [v.label for v in vs] == ["attention 0.5", "attention 0.8", "attention 1"]
    assert [v.request["attention_strength"] for v in vs] == [0.5, 0.8, 1.0]
    assert all(v.request["prompt"] == "a dog running" and v.request["seed"] == 3 for v in vs)
    vs = SweepRequest(_req(), "control_strength", ["0.2", 1]).variants()
    assert [v.request["controls"][0]["strength"] for v in vs] == [0.2, 1.0]
    vs = SweepRequest(_req(control=None), "seed", [1, 2, 3, 4, 5]).variants()
    assert [v.request["seed"] for v in vs] == [1, 2, 3, 4, 5] and vs[4].label == "seed 5"


def test_ab_drops_the_ic_lora_and_its_controls(tmp_path):
    ic = _lora(tmp_path / "ic.safetensors", {"reference_downscale_factor": "2"})
    style = _lora(tmp_path / "style.safetensors", {})
    req = _req(loras=[{"path": ic, "weight": 1.0}, {"path": style, "weight": 0.5}], mask="m.npy",
               attention_strength=0.7)
    a, b = SweepRequest(req, "ab").variants()
    assert a.label == "with IC-LoRA" and a.request == req
    assert b.label == "without IC-LoRA"
    assert b.request["controls"] == [] and b.request["mask"] is None and b.request["attention_strength"] == 1.0
    assert b.request["loras"] == [{"path": style, "weight": 0.5}] and b.request["seed"] == 3
    assert b.note == "dropped: 1 control, ic.safetensors"
    # an IC-LoRA at D=1 written without the metadata key: with controls, every LoRA is treated as the IC-LoRA
    r, note = without_ic_lora(_req(loras=[{"path": style, "weight": 1.0}]))
    assert r["loras"] == [] and "treated as the IC-LoRA" in note


def test_sweep_requests_are_checked():
    with pytest.raises(UserError, match="at least 2 values"):
        SweepRequest(_req(), "attention_strength", [0.5]).validate()
    with pytest.raises(UserError, match="between 0 and 1"):
        SweepRequest(_req(), "control_strength", [0.5, 2]).validate()
    with pytest.raises(UserError, match="no control video"):
        SweepRequest(_req(control=None), "ab").validate()
    with pytest.raises(UserError, match="takes no values"):
        SweepRequest(_req(), "ab", [1]).validate()
    with pytest.raises(UserError, match="at most 8"):
        SweepRequest(_req(), "seed", list(range(9))).validate()
    with pytest.raises(UserError, match="must be one of"):
        SweepRequest.from_dict({"request": _req(), "axis": "cfg", "values": [1, 2]})
    with pytest.raises(UserError, match="whole numbers"):
        SweepRequest(_req(), "seed", [1, 2.5]).validate()
    with pytest.raises(UserError, match="prompt is empty"):
        SweepRequest(_req(prompt=""), "seed", [1, 2]).validate()
    assert SweepRequest.from_dict({"request": _req(), "axis": "seed", "values": [1, 2]}).to_dict()["values"] == [1, 2]


def test_grid_has_the_expected_size_and_labels(tmp_path):
    from pipelines.video_io import probe, read_video

    from tests.helpers import textured_frames

    vids = [textured_frames(9, 96, 64, seed=k) for k in range(3)]
    vids.append(textured_frames(5, 48, 32, seed=9))  # smaller and shorter: fitted, held
    assert grid_layout(4) == (4, 1) and grid_layout(5) == (3, 2) and grid_layout(3, columns=2) == (2, 2)
    g = compose_grid(vids, ["a", "b", "c", "small"])
    lh = label_height(64)
    assert g.shape == (9, 64 + lh, 4 * 96, 3) and (g.shape[2], g.shape[1]) == grid_size(4, 96, 64)
    assert np.array_equal(g[:, lh:, 96:192], vids[1])  # a same-size cell is the video exactly
    assert g[0, :lh, :96].max() > 200  # the label is drawn
    assert np.array_equal(g[8, lh:, 288:], g[4, lh:, 288:])  # the short one holds its last frame
    path = write_grid(tmp_path / "grid.mp4", vids[:3], ["x", "y", "z"], 24.0, columns=2,
                      comment=json.dumps({"labels": ["x", "y", "z"]}))
    info = probe(path)
    assert (info.width, info.height) == grid_size(3, 96, 64, columns=2) == (192, 2 * (64 + lh))
    assert info.frames == 9
    frames, _ = read_video(path)
    cell = frames[:, lh:lh + 64, :96].astype(int)
    assert np.abs(cell - vids[0]).mean() < 0.5 * np.abs(cell - vids[1]).mean()  # h264: close, not exact
    with pytest.raises(UserError, match="at most 16"):
        grid_layout(17)


def test_three_attention_strengths_order_their_differences(tmp_path, make_video):
    """A sweep of 3 attention strengths on the tiny model: 3 videos, and the pair furthest apart in strength
    differs most (pairwise mean absolute differences, measured on the written videos)."""
    from pipelines.service import EngineService
    from pipelines.sweeps import run_sweep
    from pipelines.video_io import probe

    clip = make_video("ctl.mp4", frames=9)
    events = []
    res = run_sweep(EngineService(), {"request": _req(str(clip)), "axis": "attention_strength",
                                      "values": [0.0, 0.5, 1.0]}, tmp_path / "out",
                    progress=lambda f, m, p: events.append((f, m)))
    assert len(res["videos"]) == 3 and res["labels"] == ["attention 0", "attention 0.5", "attention 1"]
    d = np.array(res["differences"])
    print("pairwise mean |a-b| (0..255):\n", d)
    assert d[0, 2] > d[0, 1] > 0 and d[0, 2] > d[1, 2] > 0
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    info = probe(res["grid"])
    assert (info.width, info.height) == grid_size(3, 96, 64) and info.frames == 9
    assert json.loads(open(res["sidecar"]).read())["differences"] == res["differences"]
    fr = [f for f, _ in events]
    assert fr == sorted(fr) and fr[-1] == 1.0 and any(m.startswith("2/3 attention 0.5") for _, m in events)
    for v in res["videos"]:
        assert json.loads(open(v.replace(".mp4", ".json")).read())["request"]["prompt"] == "a dog running"


def test_cli_sweep_from_a_settings_file(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.video_io import probe

    settings = tmp_path / "req.json"
    settings.write_text(json.dumps({"request": _req(control=None, frames=1, width=64, height=64)}))  # a sidecar
    assert main(["sweep", "--settings", str(settings), "--axis", "seed", "--values", "1,2",
                 "--out-dir", str(tmp_path / "out")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["labels"] == ["seed 1", "seed 2"] and len(got["videos"]) == 2
    assert got["differences"][0][1] > 0  # two seeds, two different videos
    info = probe(got["grid"])
    assert (info.width, info.height) == grid_size(2, 64, 64)
    assert main(["sweep", "--settings", str(settings), "--axis", "ab", "--out-dir", str(tmp_path / "o2")]) == 2
    assert "no control video" in capsys.readouterr().err
