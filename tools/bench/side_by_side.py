"""--side-by-side: on this CPU, our whole process (import + load + compile + 8 chunks) vs upstream's."""

from __future__ import annotations

from .common import print_table


def run(args, env):
    import side_by_side  # tools/side_by_side.py

    sb = side_by_side.run(args.upstream or None, args.side_runs)
    print("\n## side by side, whole process (import + load + compile + 8 chunks): mid size (dim 768, 6 heads, "
          "8 layers, 16x26 latents), 24 frames, window 21, fp32, random weights")
    print_table(sb, ["side", "runs", "total_s", "total_s_range", "import_s", "load_s", "first_chunk_s",
                     "steady_chunk_s", "chunks_s", "vs_upstream"])
    return sb
