"""Your own scans: raw T1 (a manifest or a BIDS dataset) to skull-stripped MNI images and a manifest.

:func:`prepare_scans` takes any T1 scans, in any orientation, with skull, and writes what the
models read: per scan a brain image and mask on the 2 mm ICBM152 2009a template grid, a QC
table and an HTML QC report, and a manifest that ``brainage validate`` accepts. Per scan:
read with nibabel and reorient to RAS -> brain mask (the manifest's ``mask`` column when
given, else deepbet) -> N4 -> affine registration to the template -> resampling -> QC; the
image steps, QC metrics and thresholds are those of the IXI import
(:mod:`brainage_core.cohorts.ixi`). Results are cached per scan by input hashes, so a rerun
does no work; every row or scan that fails is reported with its file and reason while the
others go on.

Modules:

- :mod:`.bids`: :func:`read_bids`, a small BIDS reader (participants.tsv + T1w files), and
  the BIDS-derivatives output names;
- :mod:`.jobs`: one scan, deepbet included, with its cache sidecar;
- :mod:`.report`: the QC status of a scan and the HTML report;
- :mod:`.pipeline`: :func:`prepare_scans`, :func:`manifest_rows` and :class:`PrepareReport`.
"""

from brainage_core.prepare.bids import SPACE, BidsError, BidsInput, read_bids
from brainage_core.prepare.jobs import PIPELINE_VERSION, PREPARATION, deepbet_mask
from brainage_core.prepare.pipeline import PrepareReport, manifest_rows, prepare_scans
from brainage_core.prepare.report import qc_status, write_qc_html

__all__ = [
    "PIPELINE_VERSION",
    "PREPARATION",
    "SPACE",
    "BidsError",
    "BidsInput",
    "PrepareReport",
    "deepbet_mask",
    "manifest_rows",
    "prepare_scans",
    "qc_status",
    "read_bids",
    "write_qc_html",
]
