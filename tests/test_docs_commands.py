"""The commands the README and docs/ show: every program and file they name exists, every
`--config.FIELD` they set is a field of that config, and the quick ones (the demo model's, no
downloads) run as shown."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex

import pytest

from conftest import REPO
from pyramid_jax.config import parse_config

DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]


def commands(path: str) -> list[str]:
    """The `python ...` lines of a file's bash blocks (continuations joined, comments cut)."""
    text = open(os.path.join(REPO, path)).read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python ") and "$(" not in line:
                out.append(line)
    return out


ALL = [(path, cmd) for path in DOCS for cmd in commands(path)]


def test_docs_show_commands():
    assert len(ALL) >= 20 and any(p == "README.md" for p, _ in ALL)


@pytest.mark.parametrize("path,cmd", ALL, ids=[f"{p}:{i}" for i, (p, _) in enumerate(ALL)])
def test_command_names_real_programs_files_and_fields(path, cmd):
    argv = shlex.split(cmd)
    if argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"{path}: no module {argv[2]}"
    elif argv[1].endswith(".py"):
        assert os.path.isfile(os.path.join(REPO, argv[1])), f"{path}: no file {argv[1]}"
    config = [a for a in argv if a.startswith("--config")]
    if config and not re.search(r"\[|NAME|FIELD", cmd):  # a usage line with placeholders is not parsed
        # parsed as the program parses it: the config file exists, every field is one
        cwd = os.getcwd()
        try:
            os.chdir(REPO)
            parse_config(["prog", *config])
        finally:
            os.chdir(cwd)


@pytest.mark.slow
def test_readme_demo_commands_run(tmp_path):
    """The README's generate commands with the demo config, as shown (the output moved to a
    temporary folder)."""
    from pyramid_jax.cli import generate

    demo = [cmd for path, cmd in ALL if path == "README.md" and "pyramid_jax.generate" in cmd
            and "configs/demo.py" in cmd and "init_video" not in cmd]
    assert demo
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        for i, cmd in enumerate(demo):
            out = tmp_path / f"{i}.mp4"
            assert generate.main([*shlex.split(cmd)[3:], f"--config.output={out}"]) == 0, cmd
            assert out.exists()
    finally:
        os.chdir(cwd)
