"""pyramid_jax.sharding: the logical-axis rules, the mesh specs they give, and placing or
pinning trees by their logical layout (one real device, or an abstract 2 x 4 mesh while tracing);
the meshes: a sharded chunk step on 8 fake CPU devices equals one device (tests/sharded_check.py
in a subprocess), and mesh errors are clear."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from conftest import run_tool
from pyramid_jax import sharding
from pyramid_jax.models.wan.modeling import WanConfig
from pyramid_jax.sharding import ParallelError, check_fit, make_mesh


@pytest.fixture(scope="module")
def one_device_mesh():
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), (sharding.DATA, sharding.MODEL))


def constraint_specs(fn, *args):
    """The PartitionSpec of every sharding_constraint in fn's jaxpr, in order."""
    eqns = jax.make_jaxpr(fn)(*args).eqns
    return [e.params["sharding"].spec for e in eqns if e.primitive.name == "sharding_constraint"]


def test_mesh_axes_and_rules():
    assert (sharding.DATA, sharding.MODEL) == ("data", "model")
    assert sharding.RULES == {"batch": "data", "heads": "model", "mlp": "model", "pages": "model", "vocab": "model",
                              "channels": "model"}


def test_fitted_spec_leaves_what_the_mesh_does_not_divide_whole():
    mesh = AbstractMesh((2, 4), (sharding.DATA, sharding.MODEL))
    assert sharding.fitted_spec(P(None, "channels"), (3, 8), mesh) == P(None, "model")
    assert sharding.fitted_spec(P(None, "channels"), (3, 3), mesh) == P(None, None)  # 3 output channels stay whole
    assert sharding.fitted_spec(P("batch", "heads"), (4, 6), mesh) == P("data", None)


@pytest.mark.parametrize("logical, mesh", [
    (P("batch", "heads"), P("data", "model")),
    (P(None, "mlp"), P(None, "model")),
    (P("batch", "pages"), P("data", "model")),
    (("batch", None, "heads"), P("data", None, "model")),  # a plain tuple of names works too
    (P("time", "batch"), P(None, "data")),  # names without a rule are replicated
    (P(), P()),
    ((), P()),
])
def test_mesh_spec(logical, mesh):
    assert sharding.mesh_spec(logical) == mesh


def test_param_meta_names_axes_without_a_mesh():
    assert sharding.param_meta("heads", None) == {"out_sharding": ("heads", None), "eager_sharding": False}

    class Layer(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((2, 3)), **sharding.param_meta(None, "mlp"))
            self.b = nnx.Param(jnp.zeros((3,)), **sharding.param_meta("mlp"))

    assert sharding.active_mesh() is None
    specs = nnx.get_partition_spec(nnx.state(Layer()))
    assert specs["w"].get_value() == P(None, "mlp")
    assert specs["b"].get_value() == P("mlp")


def test_named_keeps_the_tree_and_maps_each_spec(one_device_mesh):
    logical = {"x": P("batch"), "pair": (P(None, "heads"), P())}
    got = sharding.named(one_device_mesh, logical)
    assert jax.tree.structure(got, is_leaf=lambda s: isinstance(s, NamedSharding)) == \
        jax.tree.structure(logical, is_leaf=lambda s: isinstance(s, P))
    assert all(s.mesh is one_device_mesh for s in (got["x"], *got["pair"]))
    assert (got["x"].spec, got["pair"][0].spec, got["pair"][1].spec) == (P("data"), P(None, "model"), P())


def test_put_places_every_leaf_with_its_layout(one_device_mesh):
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": (np.ones((2, 2), np.int32), np.zeros(3, np.float32))}
    logical = {"a": P("batch"), "b": (P(None, "heads"), P())}
    out = sharding.put(tree, one_device_mesh, logical)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    assert out["a"].sharding.spec == P("data")
    assert out["b"][0].sharding.spec == P(None, "model")
    assert out["b"][1].sharding.spec == P()
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
        assert isinstance(got, jax.Array) and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)


def test_put_takes_nnx_partition_specs(one_device_mesh):
    """The way the pipeline places a model's params: the specs nnx derives from param_meta."""
    class Layer(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones((2, 4)), **sharding.param_meta(None, "heads"))

    state = nnx.state(Layer())
    placed = sharding.put(state, one_device_mesh, nnx.get_partition_spec(state))
    assert placed["w"].get_value().sharding.spec == P(None, "model")


def test_no_active_mesh_by_default():
    assert sharding.active_mesh() is None


def test_a_one_device_mesh_is_not_active(one_device_mesh):
    # nothing to split: callers skip the constraints
    with jax.set_mesh(one_device_mesh):
        assert sharding.active_mesh() is None


def test_abstract_mesh_is_active_while_tracing():
    mesh = AbstractMesh((2, 4), (sharding.DATA, sharding.MODEL))
    with jax.sharding.use_abstract_mesh(mesh):
        assert sharding.active_mesh() == mesh
    assert sharding.active_mesh() is None


def test_constrain_without_mesh_returns_the_tree_unchanged():
    tree = {"k": jnp.zeros((2, 4)), "t": jnp.ones(3)}
    assert sharding.constrain(tree, {"k": P("batch", "heads"), "t": P("heads")}) is tree
    assert constraint_specs(lambda x: sharding.constrain(x, P("batch")), jnp.zeros(4)) == []


def test_constrain_pins_each_leaf_under_a_mesh():
    tree = {"k": jnp.zeros((2, 8, 4)), "t": jnp.zeros((3, 4), jnp.int32)}
    logical = {"k": P("batch", "pages"), "t": P(None, "heads")}
    with jax.sharding.use_abstract_mesh(AbstractMesh((2, 4), (sharding.DATA, sharding.MODEL))):
        specs = constraint_specs(lambda x: sharding.constrain(x, logical), tree)
    # leaves in the tree's order: k then t
    assert specs == [P("data", "model"), P(None, "model")]


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
    assert len(errs) == 20 and max(errs.values()) <= 1e-5, errs
    assert not any(moves.values()), moves  # the page pool never leaves its devices


@pytest.mark.slow
def test_meshes_equal_one_device_pallas():
    errs, moves = _split(_sharded("pallas", "2x4,1x2"))
    assert len(errs) == 10 and max(errs.values()) <= 1e-5, errs
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
