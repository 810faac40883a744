"""A small BIDS dataset made of IXI scans, for the "Your own data" chapter.

The chapter shows the front door of brainage on data shaped like a user's: raw T1 scans with
skull in a BIDS folder. :func:`bids_from_ixi` builds one from a few IXI scans (copied, so the
IXI folder is never touched) with a ``participants.tsv``; :func:`held_out_subjects` picks IXI
subjects that a run never trained on, so the chapter's ages are honest predictions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from brainage_core.cohorts.ixi import parse_ixi_name, read_demographics
from brainage_core.fileio import atomic_path, write_json
from brainage_core.ownership import claim
from brainage_core.rundir import read_predictions

__all__ = ["bids_from_ixi", "held_out_subjects", "without_folder"]


def without_folder(text: str, folder: str | os.PathLike[str]) -> str:
    """``text`` with the absolute path of ``folder`` (and its separator) removed, for display."""
    return text.replace(f"{Path(folder).resolve()}{os.sep}", "")


def held_out_subjects(run_dir: str | os.PathLike[str], n: int) -> list[str]:
    """The first ``n`` subjects (by ID) of a run's test split: scans it never trained or selected on."""
    predictions = read_predictions(run_dir)
    subjects = sorted(predictions.loc[predictions["split"] == "test", "subject_id"].astype(str))
    if len(subjects) < n:
        raise ValueError(f"{run_dir}: only {len(subjects)} test subject(s); asked for {n}")
    return subjects[:n]


def bids_from_ixi(
    ixi_dir: str | os.PathLike[str],
    bids_dir: str | os.PathLike[str],
    subject_ids: Sequence[str],
    without_age: Sequence[str] = (),
) -> Path:
    """Copy IXI T1 scans into a BIDS dataset: ``sub-<ID>/anat/sub-<ID>_T1w.nii.gz`` and ``participants.tsv``.

    Args:
        ixi_dir: an IXI folder (``t1/`` and ``participants.csv`` or ``IXI.xls``).
        bids_dir: the dataset to write (created; its files are recorded as brainage's own).
        subject_ids: IXI subject IDs such as ``IXI012``.
        without_age: subjects whose age is left out of ``participants.tsv`` (``n/a``), to show
            how a missing age is reported.

    Returns:
        ``bids_dir``.

    Raises:
        FileNotFoundError: a subject has no T1 file in ``ixi_dir/t1``.
    """
    ixi, root = Path(ixi_dir), Path(bids_dir)
    demographics_file = ixi / "participants.csv" if (ixi / "participants.csv").is_file() else ixi / "IXI.xls"
    demographics = read_demographics(demographics_file).table
    scans = {scan.subject_id: scan for scan in map(parse_ixi_name, sorted((ixi / "t1").glob("IXI*_T1.nii*")))}
    missing = [subject for subject in subject_ids if subject not in scans]
    if missing:
        raise FileNotFoundError(f"{ixi / 't1'}: no T1 file for {missing}")
    targets = {subject: root / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz" for subject in subject_ids}
    claim(root, [*targets.values(), root / "participants.tsv", root / "dataset_description.json"])
    lines = ["participant_id\tage\tsex"]
    for subject, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=".nii.gz") as temp:
            shutil.copyfile(scans[subject].path, temp)
        age = "n/a" if subject in without_age else f"{demographics.at[subject, 'age']:.2f}"
        lines.append(f"sub-{subject}\t{age}\t{demographics.at[subject, 'sex']}")
    with atomic_path(root / "participants.tsv", suffix=".tsv") as temp:
        temp.write_text("\n".join(lines) + "\n")
    write_json(
        root / "dataset_description.json",
        {
            "Name": "IXI scans for the brainage 'Your own data' chapter",
            "BIDSVersion": "1.9.0",
            "License": "CC BY-SA 3.0",
        },
    )
    return root
