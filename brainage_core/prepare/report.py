"""The QC report of ``brainage prepare``: one self-contained HTML page, worst scans first.

Each scan gets a row with its status, the reason or its QC metrics and its QC figure (three
slices with the template brain outline), embedded as a base64 PNG so the page opens anywhere
and loads nothing from the network. Rows are ordered: scans that could not be prepared, then
scans that failed QC, then borderline ones (passing within :data:`BORDERLINE_MARGIN` of a
threshold), then the rest.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainage_core.cohorts.ixi.qc import QC_BRAIN_VOLUME_ML, QC_MIN_CORRELATION, QC_MIN_DICE, passes_qc
from brainage_core.fileio import atomic_path

__all__ = ["BORDERLINE_MARGIN", "STATUS_ORDER", "ScanResult", "qc_status", "write_qc_html"]

# A passing scan is borderline when a metric lies within this of its threshold.
BORDERLINE_MARGIN: dict[str, float] = {"dice": 0.01, "correlation": 0.05, "brain_volume_ml": 100.0}
STATUS_ORDER = ("error", "qc_failed", "borderline", "ok")


@dataclass(frozen=True)
class ScanResult:
    """One scan's outcome, for the report.

    Attributes:
        scan_id: the scan's name.
        image: its input file.
        status: one of :data:`STATUS_ORDER`.
        message: why it could not be prepared (``status == "error"``), else empty.
        qc: its QC record (empty for an error).
        figure: its QC figure, or ``None``.
    """

    scan_id: str
    image: str
    status: str
    message: str = ""
    qc: Mapping[str, Any] | None = None
    figure: Path | None = None


def qc_status(qc: Mapping[str, Any]) -> str:
    """``qc_failed``, ``borderline`` or ``ok`` for a QC record (thresholds of :mod:`.qc`)."""
    if not passes_qc(qc):
        return "qc_failed"
    low, high = QC_BRAIN_VOLUME_ML
    volume = qc["brain_volume_ml"]
    near = (
        qc["dice"] < QC_MIN_DICE + BORDERLINE_MARGIN["dice"]
        or qc["correlation"] < QC_MIN_CORRELATION + BORDERLINE_MARGIN["correlation"]
        or min(volume - low, high - volume) < BORDERLINE_MARGIN["brain_volume_ml"]
    )
    return "borderline" if near else "ok"


def _figure_tag(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="QC figure" src="data:image/png;base64,{encoded}">'


def _metrics(qc: Mapping[str, Any] | None) -> str:
    if not qc:
        return ""
    names = ("dice", "correlation", "brain_volume_ml", "affine_scale", "mask_source")
    return "<br>".join(f"{name}: {html.escape(str(qc[name]))}" for name in names if name in qc)


STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
tr.error td:first-child, tr.qc_failed td:first-child { background: #f8d0d0; }
tr.borderline td:first-child { background: #fbeec0; }
tr.ok td:first-child { background: #d6efd6; }
img { height: 170px; }
"""


def write_qc_html(results: Sequence[ScanResult], path: Path, title: str) -> Path:
    """Write the QC report: a summary line and a table of every scan, errors and failures first.

    Args:
        results: one per scan, any order.
        path: the HTML file to write (atomically).
        title: the page title (e.g. the input's name).

    Returns:
        ``path``.
    """
    ordered = sorted(results, key=lambda r: (STATUS_ORDER.index(r.status), r.scan_id))
    counts = ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in STATUS_ORDER)
    rows = []
    for result in ordered:
        rows.append(
            f'<tr class="{result.status}"><td>{result.status}</td>'
            f"<td>{html.escape(result.scan_id)}<br><small>{html.escape(result.image)}</small></td>"
            f"<td>{html.escape(result.message)}{_metrics(result.qc)}</td>"
            f"<td>{_figure_tag(result.figure)}</td></tr>"
        )
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>{len(results)} scan(s): {counts}. Thresholds: Dice with the template brain mask &ge; {QC_MIN_DICE}, "
        f"correlation with the template &ge; {QC_MIN_CORRELATION}, brain volume {QC_BRAIN_VOLUME_ML[0]:g}-"
        f"{QC_BRAIN_VOLUME_ML[1]:g} ml. The red outline is the template brain.</p>\n"
        "<table><tr><th>status</th><th>scan</th><th>reason / QC</th><th>figure</th></tr>\n"
        + "\n".join(rows)
        + "\n</table></body></html>\n"
    )
    with atomic_path(path, suffix=".html") as temp:
        temp.write_text(page, encoding="utf-8")
    return path
