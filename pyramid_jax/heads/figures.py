"""Figures of a head map: the [layers, heads] grid by type, and a few heads' profiles and
folded spectra per type (PNG, beside the map)."""

from __future__ import annotations

import logging

import numpy as np

from pyramid_jax.cache.head_map import TYPE_NAMES
from pyramid_jax.heads.classify import folded_spectrum
from pyramid_jax.media import write_png

log = logging.getLogger("classify_heads")


def draw_figures(stem: str, head_map, profiles, thresholds):
    try:  # here, not at the top: choosing the Agg backend is a side effect
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no figures")
        return []
    from matplotlib.colors import ListedColormap

    colors = {-1: "#3b7dd8", 1: "#e0a030", 2: "#6a4c93"}
    layers, heads = head_map.shape
    fig, ax = plt.subplots(figsize=(max(4, heads * 0.45), max(3, layers * 0.22)))
    code = np.vectorize({-1: 0, 1: 1, 2: 2}.get)(head_map)
    ax.imshow(code, cmap=ListedColormap([colors[-1], colors[1], colors[2]]), vmin=0, vmax=2, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    counts = ", ".join(f"{TYPE_NAMES[t]} {int((head_map == t).sum())}" for t in (1, -1, 2))
    ax.set_title(f"head map: {counts}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[t]) for t in (1, -1, 2)]
    ax.legend(handles, [TYPE_NAMES[t] for t in (1, -1, 2)], loc="upper right", fontsize=7,
              bbox_to_anchor=(1.0, -0.08), ncol=3)
    grid_png = stem + "_grid.png"
    write_png(grid_png, fig, dpi=120, bbox_inches="tight")
    plt.close(fig)

    mean_prof = profiles.mean(0)  # [L, H, T]
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.5))
    period, folded = folded_spectrum(mean_prof, thresholds)
    for col, t in enumerate((1, -1, 2)):
        idx = np.argwhere(head_map == t)[:4]
        for (layer, h) in idx:
            axes[0, col].plot(mean_prof[layer, h], lw=1, label=f"L{layer} H{h}")
            axes[1, col].plot(period, folded[layer, h], lw=1)
        axes[0, col].axhline(0, color="k", lw=0.5)
        axes[0, col].set_title(f"{TYPE_NAMES[t]}: mean logit vs history frame", fontsize=9)
        axes[0, col].legend(fontsize=6)
        axes[1, col].set_xlim(2, min(30, period.max()))
        axes[1, col].axvspan(thresholds.period_min, thresholds.period_max, color="0.9")
        axes[1, col].set_title("folded spectrum of the first difference", fontsize=9)
        axes[1, col].set_xlabel("period (frames)")
    fig.tight_layout()
    prof_png = stem + "_profiles.png"
    write_png(prof_png, fig, dpi=110)
    plt.close(fig)
    return [grid_png, prof_png]
