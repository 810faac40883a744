"""Read a BIDS dataset's T1 scans and demographics as manifest rows.

A small parser of the part of BIDS that brain age needs, instead of pybids: pybids is not a
dependency (it is large, pulls SQLAlchemy and builds a database of every file), and brainage
reads only two things:

- ``participants.tsv`` (tab-separated, ``n/a`` for missing values): ``participant_id``,
  ``age``, ``sex`` (``M``/``F``, also ``male``/``female``), optional ``group`` (default
  ``CN``), ``mmse``, ``cdr``, ``updrs3``, ``hoehn_yahr`` and ``site``;
- ``sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz]``;
- ``sub-<label>/sub-<label>_sessions.tsv`` when present: its ``age`` column (by
  ``session_id``) gives the age at each session, which wins over ``participants.tsv``
  (longitudinal datasets store ages there).

Every T1w file becomes one row (``subject_id`` = the participant, ``session`` and ``run``
from the file's entities, ``scan_id`` = the file name without ``_T1w.nii[.gz]``). Problems
(a subject without a participants row, a scan without an age; an unknown sex or group) name the
file and row and leave that subject's scans out; the other scans go on. The prepared outputs
follow BIDS-derivatives naming (:func:`derivative_paths`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from brainage_core.fileio import atomic_path
from brainage_core.manifest import KNOWN_GROUPS, SCORE_COLUMNS

__all__ = ["SPACE", "BidsError", "BidsInput", "derivative_paths", "read_bids", "write_dataset_description"]

SPACE = "MNI152NLin2009aSym"  # the ICBM152 2009a symmetric template of load_registration_template
SEX_NAMES = {"m": "M", "male": "M", "f": "F", "female": "F"}
MISSING = ("", "n/a", "na", "nan")
T1W_NAME = re.compile(r"^(?P<stem>sub-[A-Za-z0-9]+(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)_T1w\.nii(?:\.gz)?$")


class BidsError(ValueError):
    """The folder cannot be read as a BIDS dataset at all (the message says why and what to do)."""


@dataclass
class BidsInput:
    """The scans found in a BIDS dataset.

    Attributes:
        root: the dataset folder.
        rows: one manifest row per usable T1w scan (``subject_id``, ``image`` (absolute),
            ``age``, ``sex``, ``group``, ``session``, ``run``, ``scan_id``, ``bids_prefix`` and
            the scores and ``site`` given in ``participants.tsv``).
        problems: every scan or participants row left out, with the file, row and reason.
    """

    root: Path
    rows: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in MISSING


def _age(value: str | None) -> float:
    """An age cell: NaN when missing (``n/a``); ValueError when not a number."""
    return float("nan") if _missing(value) else float(str(value))


def _read_tsv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a BIDS ``.tsv`` file (stripped strings); BidsError when a required column is missing."""
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream, delimiter="\t")
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in columns]
        if missing:
            raise BidsError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(columns) or 'none'})")
        return [{key.strip(): (value or "").strip() for key, value in raw.items() if key is not None} for raw in reader]


def _read_participants(path: Path, problems: list[str]) -> dict[str, dict[str, object]]:
    """Demographics by participant (``sub-<label>``); unusable rows go to ``problems``.

    A missing age (``n/a``) is kept as NaN: the subject's ``sessions.tsv`` may give it.
    """
    table: dict[str, dict[str, object]] = {}
    for number, row in enumerate(_read_tsv(path, ("participant_id", "age", "sex")), start=1):
        where = f"{path} row {number} ({row['participant_id'] or 'no participant_id'})"
        subject = row["participant_id"]
        if not subject:
            problems.append(f"{where}: participant_id is empty; fill it in")
            continue
        subject = subject if subject.startswith("sub-") else f"sub-{subject}"
        sex = SEX_NAMES.get(row["sex"].lower())
        group = "CN" if _missing(row.get("group")) else str(row.get("group"))
        table[subject] = {}  # known but unusable unless filled below: its scans are not reported twice
        try:
            age = _age(row["age"])
        except ValueError:
            problems.append(f"{where}: age {row['age']!r} is not a number; its scans are left out")
            continue
        if sex is None:
            problems.append(f"{where}: sex {row['sex']!r} is not M/F/male/female; its scans are left out")
        elif group not in KNOWN_GROUPS:
            problems.append(f"{where}: unknown group {group!r} (use {', '.join(KNOWN_GROUPS)}); left out")
        else:
            entry: dict[str, object] = {"age": age, "sex": sex, "group": group, "_where": where}
            entry.update({column: row[column] for column in (*SCORE_COLUMNS, "site") if not _missing(row.get(column))})
            table[subject] = entry
    return table


def _session_ages(root: Path, subject: str, problems: list[str]) -> tuple[Path | None, dict[str, float]]:
    """Ages by session label from ``sub-<label>/sub-<label>_sessions.tsv`` (when it has an ``age`` column)."""
    path = root / subject / f"{subject}_sessions.tsv"
    if not path.is_file():
        return None, {}
    ages = {}
    for number, row in enumerate(_read_tsv(path, ("session_id",)), start=1):
        label = row["session_id"].removeprefix("ses-")
        try:
            ages[label] = _age(row.get("age"))
        except ValueError:
            problems.append(f"{path} row {number} ({row['session_id']}): age {row['age']!r} is not a number")
    return path, ages


def _entities(stem: str) -> dict[str, str]:
    """``sub-01_ses-2_run-1`` -> ``{"sub": "01", "ses": "2", "run": "1"}``."""
    return dict(part.split("-", 1) for part in stem.split("_"))


def read_bids(bids_dir: str | os.PathLike[str]) -> BidsInput:
    """Find the T1w scans of a BIDS dataset and give each its participant's demographics.

    Args:
        bids_dir: the dataset root (holding ``participants.tsv`` and ``sub-*`` folders).

    Returns:
        The rows of the usable scans and every problem found.

    Raises:
        BidsError: the folder or its ``participants.tsv`` is missing or unreadable, or no
            T1w scan is found.
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise BidsError(f"BIDS folder not found: {root}")
    participants = root / "participants.tsv"
    if not participants.is_file():
        raise BidsError(
            f"{participants} is missing: add it with the columns participant_id, age and sex "
            "(tab-separated), one row per subject"
        )
    found = BidsInput(root=root)
    table = _read_participants(participants, found.problems)
    sessions: dict[str, tuple[Path | None, dict[str, float]]] = {}
    scans = sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*"))
    if not scans:
        raise BidsError(f"{root}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] file found")
    for path in scans:
        match = T1W_NAME.match(path.name)
        if match is None:
            found.problems.append(f"{path}: not a BIDS T1w file name (sub-<label>[_ses-<label>]..._T1w.nii.gz)")
            continue
        entities = _entities(match["stem"])
        if {"space", "desc"} & set(entities):
            found.problems.append(f"{path}: a derivative (space-/desc- in its name), not a raw T1w; left out")
            continue
        subject = f"sub-{entities['sub']}"
        if subject != path.relative_to(root).parts[0]:
            found.problems.append(f"{path}: its name says {subject} but it lies in {path.relative_to(root).parts[0]}")
            continue
        if subject not in table:
            found.problems.append(f"{path}: {subject} has no row in {participants}; add its age and sex")
            continue
        entry = dict(table[subject])
        if not entry:
            continue  # its participants row is unusable: reported above
        if subject not in sessions:
            sessions[subject] = _session_ages(root, subject, found.problems)
        sessions_file, ages = sessions[subject]
        age = ages.get(entities.get("ses", ""), float("nan"))
        age = age if not math.isnan(age) else float(str(entry.pop("age")))
        where = entry.pop("_where")
        if math.isnan(age):
            also = f" nor does {sessions_file} for ses-{entities.get('ses')}" if sessions_file else ""
            found.problems.append(f"{path}: no age - {where} has none{also}; add it (scan left out)")
            continue
        row: dict[str, object] = {
            "subject_id": subject,
            "image": str(path.resolve()),
            **entry,
            "age": age,
            "session": entities.get("ses", ""),
            "run": entities.get("run", ""),
            "scan_id": match["stem"],
            "bids_prefix": path.parent.relative_to(root).joinpath(match["stem"]).as_posix(),
        }
        found.rows.append(row)
    return found


def derivative_paths(out_dir: Path, bids_prefix: str) -> dict[str, Path]:
    """BIDS-derivatives names of a prepared scan: the brain image and its mask in :data:`SPACE`."""
    base = out_dir / f"{bids_prefix}_space-{SPACE}_desc-brain"
    return {"image": Path(f"{base}_T1w.nii.gz"), "mask": Path(f"{base}_mask.nii.gz")}


def write_dataset_description(out_dir: Path, source: Path) -> Path:
    """Write the derivative dataset's ``dataset_description.json`` (BIDS 1.9 derivatives fields)."""
    from importlib.metadata import version

    path = out_dir / "dataset_description.json"
    description = {
        "Name": f"brainage prepare of {source.resolve().name}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "brainage prepare",
                "Description": "deepbet skull stripping, N4, affine registration to ICBM152 2009a (SimpleITK)",
            },
            {"Name": "deepbet", "Version": version("deepbet")},
        ],
    }
    with atomic_path(path, suffix=".json") as temp:
        temp.write_text(json.dumps(description, indent=2) + "\n")
    return path
