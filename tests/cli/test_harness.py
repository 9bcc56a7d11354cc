"""pyramid_jax.cli: one harness for every program (errors, exit codes), the console scripts and
`python -m` forms that reach it, and the mesh each program honours or refuses in one line."""

from __future__ import annotations

import importlib
import os
import tomllib

import jax
import pytest

from conftest import REPO, run_main
from pyramid_jax.cli import harness
from pyramid_jax.errors import UserError
from pyramid_jax.models.wan.modeling import WanConfig
from pyramid_jax.sharding import ParallelError, batch_mesh

PROGRAMS = ("generate", "batch", "serve", "export", "classify", "convert")
TINY = ["--config=configs/tiny_random.py", "--config.num_frames=6", "--config.output="]


def test_console_scripts_are_the_programs():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, attr = target.split(":")
        targets[module.rsplit(".", 1)[1]] = getattr(importlib.import_module(module), attr)
        assert name.startswith("pyramid-") and module.startswith("pyramid_jax.cli.")
    assert sorted(targets) == sorted(PROGRAMS)
    # the documented forms run the same main
    for form, program in (("pyramid_jax.generate", "generate"), ("pyramid_jax.serve", "serve"),
                          ("pyramid_jax.export", "export"), ("pyramid_jax.batch.__main__", "batch"),
                          ("pyramid_jax.classify_tool", "classify")):
        assert importlib.import_module(form).main is targets[program], form


def _one_line(r):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_errors_are_one_line_with_exit_codes():
    def bad_input(argv):
        raise UserError("the frobnicator is missing")

    def disk(argv):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/x")

    def detailed(argv):
        e = UserError("cannot read x.pt")
        e.detail = "what torch said"
        raise e

    r = run_main(lambda argv: harness.run("prog", bad_input, argv, compile_cache_on=False), [])
    assert r.returncode == harness.BAD_INPUT and _one_line(r) == "prog: error: the frobnicator is missing"
    r = run_main(lambda argv: harness.run("prog", disk, argv, compile_cache_on=False), [])
    assert r.returncode == 2 and _one_line(r) == "prog: error: No such file or directory: /nowhere/x"
    r = run_main(lambda argv: harness.run("prog", detailed, argv, compile_cache_on=False), [])
    assert r.returncode == 2 and r.stderr.splitlines() == ["prog: error: cannot read x.pt", "what torch said"]
    r = run_main(lambda argv: harness.run("prog", lambda argv: harness.FAILED, argv, compile_cache_on=False), [])
    assert r.returncode == 1 and r.stderr == ""
    parser = harness.parser("prog", None)
    parser.add_argument("--out", required=True)
    r = run_main(lambda argv: parser.parse_args(argv) and 0, [])
    assert r.returncode == 2 and _one_line(r) == "prog: error: the following arguments are required: --out"


def test_batch_mesh_choice():
    cfg = WanConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2)
    eight = jax.devices() * 8  # only the count matters for the choice
    assert batch_mesh(0, 1, 1, cfg, eight) is None  # one prompt, data=0: one device
    assert dict(batch_mesh(0, 1, 4, cfg, eight).shape) == {"data": 4, "model": 1}
    assert dict(batch_mesh(0, 2, 3, cfg, eight).shape) == {"data": 1, "model": 2}
    assert dict(batch_mesh(0, 2, 8, cfg, eight).shape) == {"data": 4, "model": 2}
    with pytest.raises(ParallelError, match="batch 3 is not divisible by mesh.data=2"):
        batch_mesh(2, 1, 3, cfg, eight)
    with pytest.raises(ParallelError, match="heads 4 is not divisible by mesh.model=8"):
        batch_mesh(1, 8, 1, cfg, eight)


@pytest.mark.parametrize("program,argv,want", [
    ("generate", ["--config.mesh.model=2"], "generate: error: mesh.model=2 does not divide the 1 local devices"),
    ("generate", ["--config.mesh.data=2"], "generate: error: mesh 2x1 needs 2 devices, 1 are available"),
    ("export", ["--platform=cpu", "--out=/tmp/never_written.bin", "--config.mesh.model=2"],
     "export: error: export runs on one device: mesh.data and mesh.model must be 0 or 1, got 0x2"),
    ("classify", ["--out=/tmp/never_written.csv", "--config.mesh.data=2"],
     "classify_heads: error: classify_heads runs on one device: mesh.data and mesh.model must be 0 or 1, got 2x1"),
])
def test_every_program_honours_or_refuses_the_mesh(program, argv, want, tmp_path):
    main = importlib.import_module(f"pyramid_jax.cli.{program}").main
    r = run_main(main, [*TINY, *argv])
    assert r.returncode == 2 and _one_line(r) == want
