"""A bar chart of rows per bucket, drawn with matplotlib (the optional ``plot`` extra).

matplotlib is imported only here and only when a chart is asked for; it is
not a dependency of the package (``pip install 'hpd-encode[plot]'``). The
figure is rendered with the ``Agg`` canvas directly (no ``pyplot``, no GUI
backend, no global state), so it works headless and from any thread.
"""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

from hpd_encode.errors import MissingExtraError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hpd_encode.index.build import IndexStats

#: What to run when matplotlib is missing.
INSTALL_HINT = "pip install 'hpd-encode[plot]'"


def require_matplotlib(option: str = "--plot") -> None:
    """Raise :class:`MissingExtraError` (an ``ImportError``) with the install command when matplotlib is missing
    (called by the CLI before any work, so a missing extra costs no scan); ``option`` names what needs it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"{option} needs matplotlib, an optional extra: {INSTALL_HINT}") from None


def bucket_figure(stats: IndexStats) -> Figure:
    """The chart as a matplotlib :class:`~matplotlib.figure.Figure`: one bar per
    bucket of the set (empty ones too), labelled with its size and row count."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = stats.per_bucket
    fig = Figure(figsize=(max(6.0, 0.85 * len(bars) + 1.5), 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    labels = [f"{b['height']}x{b['width']}\n#{b['bucket_id']}" for b in bars]
    rows = [b["rows"] for b in bars]
    container = ax.bar(range(len(bars)), rows, color="#4272c4", edgecolor="#284682")
    ax.bar_label(container, labels=[f"{r:,}" for r in rows], fontsize=8, padding=2)
    ax.set_xticks(range(len(bars)), labels, fontsize=8)
    ax.set_ylabel("rows")
    ax.set_title(f"rows per bucket ({stats.indexed:,} indexed of {stats.rows_in:,})")
    ax.yaxis.grid(True, color="#e1e1e1")
    ax.set_axisbelow(True)
    ax.margins(y=0.1)
    return fig


def plot_buckets(stats: IndexStats, path: str | PathLike[str]) -> None:
    """Write :func:`bucket_figure` as a PNG to ``path`` (its folder is created; written
    atomically, and only over a regular file: :func:`hpd_encode.files.write_output`)."""
    from hpd_encode.files import write_output

    fig = bucket_figure(stats)
    write_output(path, "the plot", lambda fh: fig.savefig(fh, format="png"))
