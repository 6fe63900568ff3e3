"""Plots for a fit report, as matplotlib Figures: rate–distortion per tensor kind, bits and
bytes per layer, a layer × matrix heat map of predicted Δloss, and where the artifact's bytes go.

Every function takes the report's DataFrames (see `analysis.report`) and returns a
`matplotlib.figure.Figure` (a notebook shows it inline); `png_bytes` renders one as PNG, which is
what the report writer does. Nothing here selects a matplotlib backend or touches pyplot: the
figures carry their own Agg canvas. Output is deterministic: matplotlib's default style (never
the user's rc), a fixed size and DPI, and no metadata (no software version, no timestamp) in
the PNG, so the same tables give identical bytes.
"""

from __future__ import annotations

import io
import math

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
PLOT_TITLES = {
    "byte_breakdown": "Byte breakdown",
    "dloss_heatmap": "Predicted Δloss per layer and matrix",
    "rate_distortion": "Rate–distortion per tensor kind",
    "layers": "Bytes and bits per layer",
}
CHOSEN_STYLE = {"marker": "*", "s": 140, "color": "#d62728", "edgecolor": "black", "linewidths": 0.6, "zorder": 5}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _defaults() -> dict:
    """matplotlib's default style, less the backend: entering an rc_context with the default
    `backend` resolves it (to Agg here) and the choice outlives the context, which would take
    inline plots away from a notebook."""
    return {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes with no metadata (deterministic), drawn under matplotlib's
    defaults whatever the user's matplotlibrc says."""
    buf = io.BytesIO()
    with matplotlib.rc_context(rc=_defaults()):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _styled(fn):
    """Run a plot function under matplotlib's defaults, whatever the user's matplotlibrc says."""
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(rc=_defaults()):
            matplotlib.rcParams["svg.hashsalt"] = "golf"
            return fn(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _loss_column(frame: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of the loss measure to plot: predicted Δloss when known, else distortion."""
    if "predicted_dloss" in frame and _numeric(frame["predicted_dloss"]).notna().any():
        return "predicted_dloss", "predicted Δloss (nats)"
    return "distortion", "distortion tr(ΔW·H·ΔWᵀ)"


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555555")
    return fig


def _positive_log(ax, values: pd.Series, axis: str = "y") -> None:
    """Log scale when every plotted value is > 0 (zeros would vanish from a log axis)."""
    v = values.dropna()
    if len(v) and (v > 0).all() and v.max() / v.min() > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# --------------------------------------------------------------------------- rate–distortion

@_styled
def rate_distortion_figure(tensors: pd.DataFrame, candidates: pd.DataFrame | None = None) -> Figure:
    """One panel per tensor kind: each tensor's candidates as bytes vs predicted Δloss (or
    distortion), joined along rising bytes, the chosen configuration starred. Without a
    candidates table only the chosen points are drawn."""
    source = candidates if candidates is not None and len(candidates) else None
    t = tensors[_numeric(tensors["bytes"]).notna()] if "bytes" in tensors else tensors.iloc[0:0]
    quantized = t[t["kind"].isin(_quantized_kinds(t))] if len(t) else t
    frame = source if source is not None else quantized
    if frame is None or not len(frame):
        return _empty(_figure(8, 3), "no rate–distortion data")
    column, label = _loss_column(frame)
    kinds = sorted(frame["kind"].dropna().unique().tolist())
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    fig = _figure(4.2 * cols, 3.4 * rows)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(rows, cols, i + 1)
        part = frame[frame["kind"] == kind]
        if source is not None:
            groups = list(part.groupby("name", sort=True))
            for name, group in groups:
                g = group.assign(_b=_numeric(group["bytes"]), _l=_numeric(group[column])).sort_values(["_b", "_l"])
                layer = g["layer"].iloc[0] if "layer" in g else None
                ax.plot(g["_b"], g["_l"], "-o", ms=2.5, lw=0.8, alpha=0.6,
                        label=f"layer {int(layer)}" if layer is not None and not pd.isna(layer) else str(name))
            if len(groups) <= 8:
                ax.legend(fontsize=7, loc="upper right")
            chosen = part[part["chosen"].astype(str).str.lower().isin(("true", "1", "yes"))] if "chosen" in part else part.iloc[0:0]
        else:
            chosen = part
        if len(chosen):
            ax.scatter(_numeric(chosen["bytes"]), _numeric(chosen[column]), **CHOSEN_STYLE)
        _positive_log(ax, _numeric(part[column]))
        n = part["name"].nunique()
        ax.set_title(f"{kind} ({n} tensor{'s' if n != 1 else ''})", fontsize=10)
        ax.set_xlabel("bytes", fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    title = "Rate–distortion per tensor kind (★ = chosen)"
    if source is None:
        title += " — chosen configurations only (no candidates.csv)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _quantized_kinds(t: pd.DataFrame) -> list[str]:
    """Kinds with at least one quantized tensor (below 16 bits, or an int scheme): passthrough
    control tensors are a fixed cost, not a trade-off."""
    quantized = pd.Series(False, index=t.index)
    if "bits" in t:
        quantized |= _numeric(t["bits"]) < 16
    if "scheme" in t:
        quantized |= t["scheme"].astype(str).str.startswith("int")
    if "bits" not in t and "scheme" not in t:
        quantized[:] = True
    return sorted(t.loc[quantized, "kind"].dropna().unique().tolist())


# --------------------------------------------------------------------------- per layer

def _layer_label(value) -> str:
    return "other" if pd.isna(value) else str(int(value))


def _layer_order(labels) -> list[str]:
    numbers = sorted({int(v) for v in labels if v != "other"})
    return [str(n) for n in numbers] + (["other"] if "other" in set(labels) else [])


@_styled
def layer_bits_bytes_figure(tensors: pd.DataFrame) -> Figure:
    """Bytes per layer stacked by tensor kind (top) and parameter-weighted bits per weight per
    layer (bottom); tensors outside the blocks (embedding, skip weights) are the 'other' bar."""
    t = tensors.assign(_layer=tensors["layer"].map(_layer_label), _bytes=_numeric(tensors["bytes"]),
                       _params=_numeric(tensors["params"]))
    t = t[t["_bytes"].notna()]
    if not len(t):
        return _empty(_figure(9, 3), "no per-tensor bytes")
    order = _layer_order(t["_layer"])
    by_kind = t.pivot_table(index="_layer", columns="kind", values="_bytes", aggfunc="sum", fill_value=0).reindex(order)
    fig = _figure(max(7.0, 0.6 * len(order) + 4), 7)
    ax = fig.add_subplot(2, 1, 1)
    bottom = np.zeros(len(order))
    x = np.arange(len(order))
    cmap = matplotlib.colormaps["tab20"]
    for j, kind in enumerate(sorted(by_kind.columns)):
        values = by_kind[kind].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, label=kind, color=cmap(j % 20), width=0.7)
        bottom += values
    for xi, total in zip(x, bottom):
        ax.text(xi, total, f"{total / 1000:.1f}k", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, order, fontsize=8)
    ax.set_ylabel("bytes", fontsize=9)
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set_title("Bytes per layer by tensor kind", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(True, axis="y", alpha=0.3)

    ax2 = fig.add_subplot(2, 1, 2)
    sums = t.groupby("_layer")[["_bytes", "_params"]].sum().reindex(order)
    bpw = (sums["_bytes"] * 8 / sums["_params"].where(sums["_params"] > 0)).to_numpy(dtype=float)
    ax2.bar(x, np.nan_to_num(bpw), color="#4c72b0", width=0.7)
    for xi, v in zip(x, bpw):
        if np.isfinite(v):
            ax2.text(xi, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(x, order, fontsize=8)
    ax2.set_xlabel("layer", fontsize=9)
    ax2.set_ylabel("bits per weight", fontsize=9)
    ax2.set_title("Bits per weight per layer (all parts: codes, scales, LQER factors)", fontsize=10)
    ax2.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- heat map

@_styled
def dloss_heatmap_figure(tensors: pd.DataFrame) -> Figure:
    """Layer × matrix kind heat map of predicted Δloss in nats (log colour), each cell annotated:
    the loss model's cost of each tensor's choice, comparable across tensors. Without predicted
    Δloss (a packed submission) the distortion tr(ΔW·H·ΔWᵀ) is mapped instead, and the title says
    so: it is not comparable across tensors of different sensitivity."""
    column, label = _loss_column(tensors) if "predicted_dloss" in tensors or "distortion" in tensors else (None, "")
    t = tensors.assign(_d=_numeric(tensors[column])) if column else tensors.iloc[0:0].assign(_d=[])
    t = t[t["layer"].notna() & t["_d"].notna() & t["kind"].isin(_quantized_kinds(tensors))]
    if not len(t):
        return _empty(_figure(7, 3), "no per-layer Δloss to map")
    grid = t.pivot_table(index="kind", columns="layer", values="_d", aggfunc="sum")
    grid = grid.reindex(sorted(grid.index), axis=0).reindex(sorted(grid.columns), axis=1)
    values = grid.to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    fig = _figure(max(6.0, 0.7 * values.shape[1] + 3), max(3.0, 0.45 * values.shape[0] + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    norm = None
    if len(positive) and positive.max() / positive.min() > 1:
        norm = matplotlib.colors.LogNorm(vmin=positive.min(), vmax=positive.max())
    shown = np.where(values > 0, values, np.nan) if norm is not None else values
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="viridis", norm=norm)
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):  # dark text on the bright end of viridis, white elsewhere
            bright = image.norm(v) > 0.6 if v > 0 or norm is None else False
            ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_xticks(range(values.shape[1]), [str(int(c)) for c in grid.columns], fontsize=8)
    ax.set_yticks(range(values.shape[0]), list(grid.index), fontsize=8)
    ax.set_xlabel("layer", fontsize=9)
    what = ("Predicted Δloss per layer and matrix (nats; darker = cheaper)" if column == "predicted_dloss" else
            "Distortion tr(ΔW·H·ΔWᵀ) per layer and matrix (no Δloss known; not comparable across tensors)")
    ax.set_title(what, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04).set_label(label, fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- byte breakdown

@_styled
def byte_breakdown_figure(breakdown: pd.DataFrame, budget: int | None = None) -> Figure:
    """Horizontal bars: bytes per part of the shipped artifact (weights codes, scales, LQER
    factors, container, code), with each part's share of the total and the budget's headroom."""
    b = breakdown.assign(_bytes=_numeric(breakdown["bytes"]))
    b = b[b["_bytes"].notna()]
    if not len(b):
        return _empty(_figure(7, 2.5), "no byte breakdown")
    total = float(b["_bytes"].sum())
    labels = b["part"].astype(str).tolist()
    values = b["_bytes"].to_numpy(dtype=float)
    if budget:
        labels.append("headroom" if budget >= total else "OVER budget")
        values = np.append(values, abs(budget - total))
    fig = _figure(8, 0.45 * len(labels) + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(labels))[::-1]
    colors = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd", "#999999"]
    bar_colors = [colors[i % len(colors)] for i in range(len(b))] + (["#dddddd"] if budget else [])
    ax.barh(y, values, color=bar_colors)
    ref = budget or total
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {int(v):,} B ({100 * v / ref:.1f}%)", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, max(values) * 1.35 if len(values) else 1)
    ax.set_xlabel("bytes", fontsize=9)
    ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    what = f"of the {budget:,}-byte budget" if budget else "of the total"
    ax.set_title(f"Where the {int(total):,} bytes go (share {what})", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def all_plots(tables: dict[str, pd.DataFrame], budget: int | None = None) -> dict[str, Figure]:
    """Every report plot by file stem (PLOT_TITLES) → Figure."""
    tensors = tables["tensors"]
    return {
        "byte_breakdown": byte_breakdown_figure(tables["breakdown"], budget),
        "dloss_heatmap": dloss_heatmap_figure(tensors),
        "rate_distortion": rate_distortion_figure(tensors, tables.get("candidates")),
        "layers": layer_bits_bytes_figure(tensors),
    }
