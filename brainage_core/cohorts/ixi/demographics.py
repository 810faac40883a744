"""IXI names and demographics: which subject and site a T1 file is, and each subject's age and sex.

An IXI T1 file is named ``IXI<ID>-<SITE>-<N>_T1.nii.gz`` (:func:`parse_ixi_name`); the subject
is ``IXI`` and the three-digit IXI_ID. Ages and sexes come from the original ``IXI.xls``
(:func:`read_ixi_xls`) or a ``participants.csv`` with ``MRID,Age,Sex``
(:func:`read_participants_csv`); :func:`read_demographics` picks by extension. Duplicate rows
that agree are kept once; rows that disagree, or hold an unusable age or sex, are set aside in
:class:`Demographics` with a message saying what to correct, never guessed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import xlrd

__all__ = [
    "SITES",
    "Demographics",
    "IxiScan",
    "parse_ixi_name",
    "read_demographics",
    "read_ixi_xls",
    "read_participants_csv",
]

SITES: tuple[str, ...] = ("HH", "Guys", "IOP")  # Hammersmith, Guy's, Institute of Psychiatry
_MRID = re.compile(r"IXI(?P<number>\d+)-(?P<site>[A-Za-z]+)-(?P<scan>\d+)")
_T1_NAME = re.compile(_MRID.pattern + r"_T1\.nii(\.gz)?")


@dataclass(frozen=True)
class IxiScan:
    """One IXI T1 file, identified from its name.

    Attributes:
        path: the T1 file.
        mrid: the IXI scan id, e.g. ``IXI012-HH-1211``.
        subject_id: ``IXI`` and the three-digit IXI_ID, e.g. ``IXI012``.
        site: acquisition site, one of :data:`SITES`.
    """

    path: Path
    mrid: str
    subject_id: str
    site: str


def _parse_mrid(mrid: str) -> tuple[str, str]:
    """``(subject_id, site)`` of an IXI scan id such as ``IXI012-HH-1211``."""
    match = _MRID.fullmatch(mrid.strip())
    if match is None or match["site"] not in SITES:
        raise ValueError(f"{mrid!r} is not an IXI scan id IXI<ID>-<SITE>-<N> with SITE one of {', '.join(SITES)}")
    return f"IXI{int(match['number']):03d}", match["site"]


def parse_ixi_name(path: str | os.PathLike[str]) -> IxiScan:
    """Identify an IXI T1 file from its name, ``IXI<ID>-<SITE>-<N>_T1.nii.gz``.

    Raises:
        ValueError: the name does not follow the IXI pattern or the site is unknown.
    """
    path = Path(path)
    match = _T1_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name}: not an IXI T1 file name IXI<ID>-<SITE>-<N>_T1.nii.gz")
    mrid = path.name.split("_T1.nii")[0]
    subject_id, site = _parse_mrid(mrid)
    return IxiScan(path=path, mrid=mrid, subject_id=subject_id, site=site)


@dataclass
class Demographics:
    """Age and sex per subject, after resolving duplicate rows.

    Attributes:
        table: one row per subject (index ``subject_id``) with ``age`` (float, NaN when the
            table has none) and ``sex`` (``"M"`` or ``"F"``).
        conflicting: ``subject_id -> message`` for subjects whose duplicate rows disagree;
            they are not in ``table``.
        invalid: ``subject_id -> message`` for rows with an unusable age or sex.
        source: the file read.
    """

    table: pd.DataFrame
    conflicting: dict[str, str] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    source: str = ""


def _collapse(records: list[tuple[str, float, str, int]], source: Path, row_word: str) -> Demographics:
    """Merge ``(subject_id, age, sex, row)`` records: identical duplicates once, others conflicting."""
    by_subject: dict[str, list[tuple[float, str, int]]] = {}
    for subject_id, age, sex, row in records:
        by_subject.setdefault(subject_id, []).append((age, sex, row))
    rows, conflicting, invalid = [], {}, {}
    for subject_id, entries in sorted(by_subject.items()):
        values = {(None if math.isnan(age) else age, sex) for age, sex, _ in entries}
        if len(values) > 1:
            listed = "; ".join(f"{row_word} {row}: age {age:g}, sex {sex or '?'}" for age, sex, row in entries)
            conflicting[subject_id] = (
                f"{subject_id}: duplicate rows in {source.name} disagree ({listed}); left out - "
                "correct the table so the rows agree or keep one"
            )
            continue
        age, sex, row = entries[0]
        where = f"{subject_id}: {source.name} {row_word} {row}"
        if not math.isnan(age) and not 0.0 < age <= 120.0:
            invalid[subject_id] = f"{where}: age {age:g} is outside 0-120 years; left out - correct it"
        elif sex not in ("M", "F"):
            invalid[subject_id] = f"{where}: sex is not male/female; left out - correct it"
        else:
            rows.append({"subject_id": subject_id, "age": age, "sex": sex})
    table = pd.DataFrame(rows, columns=["subject_id", "age", "sex"]).set_index("subject_id")
    return Demographics(table=table, conflicting=conflicting, invalid=invalid, source=str(source))


def _number(value: str | float | None) -> float:
    """A spreadsheet/CSV cell as a float; blank cells are NaN, text raises ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return float(value)


def read_ixi_xls(path: str | os.PathLike[str]) -> Demographics:
    """Read the original IXI spreadsheet (``IXI_ID``, ``SEX_ID (1=m, 2=f)``, ``AGE``).

    Rows repeating an IXI_ID are kept once when they agree on age and sex; when they
    disagree the subject is reported in ``conflicting`` and left out (the spreadsheet has
    e.g. IXI219 and IXI328 with two different ages).

    Raises:
        ValueError: the sheet lacks one of the three columns or a cell is not a number.
    """
    path = Path(path)
    sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
    header = [str(value).strip() for value in sheet.row_values(0)]
    columns = {}
    for key, prefix in (("id", "IXI_ID"), ("sex", "SEX_ID"), ("age", "AGE")):
        matches = [index for index, name in enumerate(header) if name.upper().startswith(prefix)]
        if not matches:
            raise ValueError(f"{path}: no column starting with {prefix!r} in the header {header}; is this IXI.xls?")
        columns[key] = matches[0]
    records = []
    for row in range(1, sheet.nrows):
        values = sheet.row_values(row)
        try:
            ixi_id, sex_id, age = (_number(values[columns[key]]) for key in ("id", "sex", "age"))
        except ValueError as error:
            raise ValueError(f"{path}: spreadsheet row {row + 1}: a cell is not a number ({error})") from error
        if math.isnan(ixi_id):
            continue  # a blank line in the sheet
        sex = {1.0: "M", 2.0: "F"}.get(sex_id, "")
        records.append((f"IXI{int(ixi_id):03d}", age, sex, row + 1))
    return _collapse(records, path, "spreadsheet row")


def read_participants_csv(path: str | os.PathLike[str]) -> Demographics:
    """Read a ``participants.csv`` with columns ``MRID`` (e.g. ``IXI012-HH-1211``), ``Age``, ``Sex``.

    Duplicate subjects are resolved as in :func:`read_ixi_xls`.

    Raises:
        ValueError: a column is missing, an MRID is malformed or an age is not a number.
    """
    path = Path(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in ("MRID", "Age", "Sex") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected MRID,Age,Sex")
    records = []
    for index, (mrid, age, sex) in enumerate(zip(frame["MRID"], frame["Age"], frame["Sex"])):
        line = index + 2
        try:
            subject_id, _ = _parse_mrid(mrid)
            age_value = _number(age)
        except ValueError as error:
            raise ValueError(f"{path}: line {line}: {error}") from error
        records.append((subject_id, age_value, sex.strip().upper(), line))
    return _collapse(records, path, "line")


def read_demographics(path: str | os.PathLike[str]) -> Demographics:
    """Read IXI demographics from ``IXI.xls`` or a ``participants.csv``, by file extension."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demographics file not found: {path}")
    if path.suffix.lower() == ".xls":
        return read_ixi_xls(path)
    if path.suffix.lower() == ".csv":
        return read_participants_csv(path)
    raise ValueError(f"{path}: demographics must be IXI.xls or a participants .csv (MRID,Age,Sex)")
