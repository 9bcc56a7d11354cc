"""Sharded chunk step on 8 fake CPU devices equals one device; mesh errors are clear."""

from __future__ import annotations

import json
import os

import jax
import pytest

from conftest import run_tool
from pyramid_jax.models.wan import WanConfig
from pyramid_jax.parallel import ParallelError, check_fit, make_mesh


def _sharded(backends, meshes):
    env_flags = "--xla_force_host_platform_device_count=8"
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = env_flags
    try:
        r = run_tool("tests/sharded_check.py", backends, meshes, timeout=900)
    finally:
        if old is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = old
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _split(out):
    errs = {k: v for k, v in out.items() if not k.endswith("/pool_collectives")}
    moves = {k: v for k, v in out.items() if k.endswith("/pool_collectives")}
    return errs, moves


@pytest.mark.slow
def test_meshes_equal_one_device_reference():
    errs, moves = _split(_sharded("reference", "8x1,2x4,1x2,4x2"))
    assert len(errs) == 12 and max(errs.values()) <= 1e-5, errs
    assert not any(moves.values()), moves  # the page pool never leaves its devices


@pytest.mark.slow
def test_meshes_equal_one_device_pallas():
    errs, moves = _split(_sharded("pallas", "2x4,1x2"))
    assert len(errs) == 6 and max(errs.values()) <= 1e-5, errs
    assert not any(moves.values()), moves


def test_mesh_errors():
    devs = jax.devices() * 8  # only the count matters for the checks below
    with pytest.raises(ParallelError, match="does not divide the 8 local devices"):
        make_mesh(0, 3, devices=devs)
    with pytest.raises(ParallelError, match="needs 16 devices"):
        make_mesh(4, 4, devices=devs)
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2)
    mesh = make_mesh(1, 1)
    check_fit(mesh, 3, cfg)

    class FakeMesh:
        shape = {"data": 2, "model": 3}

    with pytest.raises(ParallelError, match="batch 3 is not divisible by mesh.data=2"):
        check_fit(FakeMesh(), 3, cfg)
    FakeMesh.shape = {"data": 1, "model": 3}
    with pytest.raises(ParallelError, match="heads 4 is not divisible by mesh.model=3"):
        check_fit(FakeMesh(), 2, cfg)
