"""Long-horizon metrics on constructed videos, and the procedural shapes dataset."""

from __future__ import annotations

import numpy as np
import pytest

from pyramid_jax import metrics
from pyramid_jax.data.shapes import random_clip, render, sample


def test_shapes_dataset_is_deterministic_and_moves():
    a, cap_a = sample(7, 20, 48, 64)
    b, cap_b = sample(7, 20, 48, 64)
    c, _ = sample(8, 20, 48, 64)
    assert a.shape == (20, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert cap_a == cap_b and not np.array_equal(a, c)
    assert metrics.frame_differences(a).mean() > 0  # things move
    clip = random_clip(7)
    assert clip.shapes[0].color in cap_a and clip.shapes[0].kind in cap_a and clip.background in cap_a
    assert render(clip, 500, 8, 8).shape[0] == 500  # any length


def test_still_video_scores_clean():
    v, _ = sample(3, 81, 48, 64)
    still = np.repeat(v[:1], 81, axis=0)
    s = metrics.summary(still)
    assert s["color_drift"] == 0 and s["flicker_boundary"] == 0 and abs(s["sharpness_trend"] - 1) < 1e-6
    assert s["persistence"] == 1.0


def test_drift_flicker_blur_and_loss_are_seen():
    v, _ = sample(3, 81, 48, 64)
    ramp = np.clip(v.astype(np.float32) + np.linspace(0, 60, 81)[:, None, None, None], 0, 255).astype(np.uint8)
    assert metrics.summary(ramp)["color_drift"] > 40
    jumpy = v.astype(np.float32).copy()
    for s in metrics.chunk_starts(81):
        jumpy[s:] += 8 * (-1) ** (s // 12)
    jumpy = np.clip(jumpy, 0, 255).astype(np.uint8)
    assert metrics.flicker(jumpy)["ratio"] > metrics.flicker(v)["ratio"] * 1.5
    blurred = v.astype(np.float32).copy()
    for t in range(40, 81):
        blurred[t] = (blurred[t] + np.roll(blurred[t], 1, 0) + np.roll(blurred[t], 1, 1) + np.roll(blurred[t], -1, 1)) / 4
    assert metrics.sharpness_trend(blurred.astype(np.uint8)) < 0.8 * metrics.sharpness_trend(v)
    gone = v.copy()
    gone[40:] = np.median(v[0].reshape(-1, 3), axis=0).astype(np.uint8)  # every object vanishes
    assert metrics.persistence(gone) < 0.6 <= metrics.persistence(v)


@pytest.mark.slow
def test_evaluate_long_tool(tmp_path):
    """The comparison tool runs end to end on the demo (tiny sizes): table, JSON, plots."""
    import json

    from conftest import run_tool

    args = ["tools/evaluate_long.py", "--config=configs/tiny_random.py", "--config.height=32", "--config.width=32",
            "--config.cache.num_dummy=4", "--policies", "window,deep_sink,dummy_forcing", "--kv-dtypes", ",int8",
            "--seconds", "1.5", "--prompts", "a ball;a cube", "--seeds", "0,3", "--paired", "--out", str(tmp_path)]
    r = run_tool(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "eval.json").read_text())
    labels = ["window", "window/int8", "deep_sink", "deep_sink/int8", "dummy_forcing", "dummy_forcing/int8"]
    assert [m["policy"] for m in doc["means"]] == labels
    assert [(v["prompt"], v["seed"]) for v in doc["videos"]] == [(0, 0), (1, 3)] * 6
    kv = {m["policy"]: m["kv_MiB"] for m in doc["means"]}
    assert kv["window/int8"] < 0.6 * kv["window"] and kv["dummy_forcing"] < kv["window"]
    for png in ("drift.png", "sharpness.png", "quality_vs_kv.png"):
        assert (tmp_path / png).exists()
    r = run_tool(*args, "--reuse")  # nothing generated again, the same numbers
    assert r.returncode == 0 and r.stdout.count("reusing") == 12 and "chunk" not in r.stdout, r.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["videos"] == doc["videos"]
    r = run_tool(*args[:-3], "--seeds", "0", "--paired")
    assert r.returncode == 2 and "as many seeds as prompts" in r.stderr
    r = run_tool("tools/evaluate_long.py", "--config=configs/tiny_random.py", "--policies", "pyramid", "--out", str(tmp_path))
    assert r.returncode == 2 and "--head-map" in r.stderr


def test_prompt_adherence_ground_truth_scores_about_one():
    """Rendered clips of their own captions score ~1; the same clips against another caption's
    colours score ~0; prompts outside the caption grammar give NaN."""
    from pyramid_jax.data.shapes import sample

    clips = [sample(2000 + i, 30, 64, 64) for i in range(24)]
    own = [metrics.prompt_adherence(v, cap, fps=10) for v, cap in clips]
    assert np.mean(own) >= 0.95, own
    other = [metrics.prompt_adherence(v, clips[(i + 1) % len(clips)][1], fps=10) for i, (v, _) in enumerate(clips)
             if metrics.caption_colors(clips[(i + 1) % len(clips)][1])[1] != metrics.caption_colors(clips[i][1])[1]]
    assert np.mean(other) <= 0.1, other
    assert np.isnan(metrics.prompt_adherence(clips[0][0], "a cat on a sofa", fps=10))
    assert metrics.caption_colors("a red circle bouncing upwards on a blue striped background") == ("red", "blue")


def test_prompt_adherence_is_not_fooled_by_grain():
    """A blue field sprinkled with single pixels of every colour shows no red shape: grain holds
    the named shape colour over 0.5% of the frame, the 3x3 median does not."""
    rng = np.random.default_rng(0)
    video = np.broadcast_to(np.asarray((40, 80, 220), np.uint8), (20, 64, 64, 3)).copy()
    grain = rng.random((20, 64, 64)) < 0.1
    video[grain] = rng.integers(0, 256, (int(grain.sum()), 3), dtype=np.uint8)
    prompt = "a red circle bouncing upwards on a blue striped background"
    assert (metrics.color_shares(video)["red"] >= 0.005).all()
    assert metrics.prompt_adherence(video, prompt, fps=10) == 0.0
    video[:, 20:30, 20:30] = (220, 40, 40)  # a real shape passes
    assert metrics.prompt_adherence(video, prompt, fps=10) == 1.0


def test_evaluate_prompts_scores_rendered_clips_as_their_captions():
    """tools/evaluate_prompts.score on clips rendered from their own captions: adherence ~1, and
    the named shape's area is the share of the frame painted in its colour (a few percent); each
    seed's adherence is kept beside their mean."""
    import os
    import sys

    from conftest import REPO
    from pyramid_jax.data import shapes

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import evaluate_prompts

    clips = [shapes.sample(3000 + i, 20, 64, 64) for i in range(6)]
    rows = evaluate_prompts.score(np.stack([v for v, _ in clips]), [c for _, c in clips], [0], fps=10)
    assert np.mean([r["adherence"] for r in rows]) >= 0.9
    for (v, caption), r in zip(clips, rows):
        painted = shapes.color_pixels(v[10:], metrics.caption_colors(caption)[0]).mean()
        assert abs(r["shape_area"] - painted) <= 0.01 and 0 < r["shape_area"] < 0.2, (r, painted)
    # two seeds a prompt, the second a grey video: each seed's score kept, their mean the prompt's
    grey = np.full_like(clips[0][0], 128)
    two = evaluate_prompts.score(np.stack([clips[0][0], grey, clips[1][0], grey]),
                                 [clips[0][1], clips[1][1]], [0, 1], fps=10)
    for r, one in zip(two, rows):
        assert r["per_seed"] == [one["adherence"], 0.0] and r["adherence"] == one["adherence"] / 2


def test_evaluate_prompts_draws_distinct_captions_and_asks_for_one_source(capsys):
    """--draw N: N distinct captions of the grammar, the same for the same seed; --prompts and
    --draw together, or neither, is one error line and exit 2 (before any model loads)."""
    import os
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import evaluate_prompts

    a = evaluate_prompts.draw_prompts(40)
    assert a == evaluate_prompts.draw_prompts(40) and len(set(a)) == 40
    assert all(metrics.caption_colors(p) is not None for p in a)
    assert evaluate_prompts.draw_prompts(40, seed=5) != a
    for argv in (["--draw", "3", "--prompts", "x.txt"], [], ["--draw", "-1"]):
        assert evaluate_prompts.main(["--config=configs/demo.py", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "give --prompts FILE or --draw N" in err[0], err
    assert evaluate_prompts.main(["--config=configs/demo.py", "--draw", "2", "--draw-seed", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--draw-seed must be >= 0" in err[0], err


def test_evaluate_prompts_draw_skips_excluded_captions(tmp_path, capsys):
    """--exclude FILE,...: a drawn set leaves out every caption those files name (whatever the
    case), and is otherwise the same draw; without --draw, or with a missing file, one error line."""
    import os
    import sys

    from conftest import REPO

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import evaluate_prompts

    a = evaluate_prompts.draw_prompts(20)
    earlier = tmp_path / "earlier.txt"
    earlier.write_text(a[3] + "\n")
    notes = tmp_path / "notes.md"
    notes.write_text(f"we tried '{a[7].upper()}' once")
    b = evaluate_prompts.draw_prompts(20, exclude=earlier.read_text() + notes.read_text())
    assert len(b) == 20 and a[3] not in b and a[7] not in b
    assert [p for p in a if p not in (a[3], a[7])] == b[:18]
    for argv in (["--prompts", str(earlier), "--exclude", str(notes)],
                 ["--draw", "2", "--exclude", f"{earlier},{tmp_path / 'missing.txt'}"]):
        assert evaluate_prompts.main(["--config=configs/demo.py", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("evaluate_prompts: error:"), err
