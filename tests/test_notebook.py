"""The Colab notebook runs headless (nbclient) on the demo path and writes a playable mp4.

The kernel is the `python3` spec of the interpreter running pytest (ipykernel in the same
environment); it inherits JAX_PLATFORMS=cpu from this process. The notebook's setup cell does
nothing network-related off Colab, and the published-weights cell only prints its commands.
"""

from __future__ import annotations

import os
import sys

import pytest

from conftest import REPO

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = os.path.join(REPO, "colab", "pyramid_jax_demo.ipynb")


def parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged `parameters`"
    return cells[0]


def test_notebook_is_valid_and_parametrised():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    src = parameters_cell(nb).source
    for name in ("PROMPT", "NUM_FRAMES", "OUTPUT", "RUN_PUBLISHED", "DECODER"):
        assert f"{name} =" in src
    assert "RUN_PUBLISHED = False" in src


@pytest.mark.slow
def test_notebook_executes_demo_path(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    output = tmp_path / "colab_demo.mp4"
    parameters_cell(nb).source = "\n".join([
        'PROMPT = "a red circle bouncing left to right on a blue striped background"',
        "NUM_FRAMES = 6",
        f"OUTPUT = {str(output)!r}",
        "RUN_PUBLISHED = False",
        'DECODER = "taehv"',  # the published path's commands then include TAEHV's
    ])
    # a first cell so a failure shows which interpreter the kernel ran
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))

    # the kernel subprocess inherits this environment (restored by monkeypatch)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": REPO}})
    client.execute()  # raises CellExecutionError if any cell fails

    def text(cell):
        return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")

    kernel_python = text(nb.cells[0]).strip()
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable)

    assert output.is_file() and output.stat().st_size > 0
    import imageio

    frames = [f for f in imageio.get_reader(str(output))]  # nframes may read as inf
    assert len(frames) > 0

    everything = "\n".join(text(c) for c in nb.cells)
    assert f"{len(frames)} frames" in everything  # the show-video cell read it back
    assert "generating 1 x 6 latent frames" in everything
    assert "RUN_PUBLISHED is False" in everything
    assert "tools/convert_checkpoint.py --kind t5" in everything
    assert "tools/convert_checkpoint.py --kind taehv" in everything and "--config.vae.kind=taehv" in everything
    videos = [o for c in nb.cells for o in c.get("outputs", [])
              if o.output_type == "display_data" and "text/html" in o.get("data", {})]
    assert any("<video" in o["data"]["text/html"] for o in videos)
