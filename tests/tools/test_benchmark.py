"""tools/benchmark.py: the registry matches the parser's section flags, and main runs a section."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))  # tools/ is not a package: its scripts import siblings by name

import bench  # noqa: E402
import bench_decoders  # noqa: E402
import benchmark  # noqa: E402

PLAN_COLUMNS = ["chip", "decoder", "policy", "kv_dtype", "memory_GiB", "fits", "videos_per_chip",
                "dit_TFLOP_per_chunk", "vae_TFLOP_per_chunk", "video_fps"]


def test_every_section_flag_has_one_registry_entry(capsys):
    parser_flags = [a.dest for a in benchmark.build_parser()._actions if isinstance(a, argparse._StoreTrueAction)]
    registry_flags = [s.flag for s in bench.SECTIONS]
    assert sorted(registry_flags) == sorted(parser_flags)
    assert len(set(registry_flags)) == len(registry_flags)
    with pytest.raises(SystemExit):
        benchmark.main([])  # no section: the error names every one
    err = capsys.readouterr().err
    for flag in registry_flags:
        assert f"--{flag.replace('_', '-')}" in err


def test_plan_writes_its_rows(tmp_path, monkeypatch, capsys):
    # The real inputs take a minute on a CPU (the 1.3B policies' plans, the decoders' compiles):
    # stand-ins with their shapes keep this to main's path, the table and the JSON.
    policy_rows = [dict(policy=label, kv_dtype=kv, keys_per_query_frame=keys, cache_GiB=gib)
                   for label, keys in (("window-21", 21 * 1560.0), ("deep_sink (21, 10 pinned)", 21 * 1560.0),
                                       ("pyramid (172 A / 156 W / 32 V)", 8000.0))
                   for kv, gib in (("bfloat16", 4.8), ("int8", 2.5))]
    monkeypatch.setattr(bench.plan, "policy_keys", lambda size="real": policy_rows)
    monkeypatch.setattr(bench_decoders, "peak_bytes", lambda kind, hw, dtype: {"wan": 4e9, "taehv": 1e9}[kind])
    monkeypatch.setattr(bench_decoders, "flops_per_latent_frame", lambda kind: {"wan": 1.3e13, "taehv": 5e11}[kind])

    out = tmp_path / "b.json"
    assert benchmark.main(["--plan", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"environment", "rows"}
    rows = data["rows"]
    assert len(rows) == 2 * len(bench.plan.CHIPS) * len(policy_rows)  # decoder x chip x (policy, kv_dtype)
    for row in rows:
        assert row["section"] == "tpu_plan"
        assert set(PLAN_COLUMNS) <= set(row)
    printed = capsys.readouterr().out
    assert "## plan: Wan2.1-1.3B 480x832 bf16" in printed
    assert [line.split() for line in printed.splitlines() if line.startswith("chip ")] == [PLAN_COLUMNS]
