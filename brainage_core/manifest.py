"""Manifests: the one way data enters brainage.

A manifest is a CSV file with one row per scan. Image (and mask) paths are relative to the
manifest's folder unless absolute. :func:`validate_manifest` reports *every* problem at once,
each with its row number and column, so a user fixes a manifest in one pass;
:func:`read_manifest` returns a validated :class:`pandas.DataFrame` with absolute paths.

Row numbers count data rows from 1 (row 1 is the first line below the header, i.e. line 2
of the file). ``data_manifests/schema.md`` documents every column.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainage_core.fileio import atomic_path
from brainage_core.scan_checks import data_problems, grid_problems, header_problems

__all__ = [
    "KNOWN_GROUPS",
    "KNOWN_SPLITS",
    "OPTIONAL_COLUMNS",
    "PREPARATION_COLUMN",
    "REQUIRED_COLUMNS",
    "SCORE_COLUMNS",
    "SCORE_RANGES",
    "ManifestError",
    "ManifestProblem",
    "manifest_folder",
    "read_manifest",
    "read_manifest_table",
    "validate_frame",
    "validate_manifest",
    "write_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("subject_id", "image", "age", "sex", "group")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "session",
    "site",
    "split",
    "fold",
    "mask",
    "mmse",
    "cdr",
    "updrs3",
    "hoehn_yahr",
    "true_gap",
    "effect_map",
    "labels",
    "preparation",
)
PREPARATION_COLUMN = "preparation"  # how the images were made (brainage prepare, the phantom); runs check it
KNOWN_GROUPS: tuple[str, ...] = ("CN", "MCI", "AD", "PD")
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "test")
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
SEXES: tuple[str, ...] = ("M", "F")
# Closed numeric ranges of the clinical scores (inclusive).
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "mmse": (0.0, 30.0),  # Mini-Mental State Examination
    "updrs3": (0.0, 132.0),  # MDS-UPDRS part III (motor examination)
    "hoehn_yahr": (0.0, 5.0),  # Hoehn & Yahr stage
}
SCORE_COLUMNS: tuple[str, ...] = ("mmse", "cdr", "updrs3", "hoehn_yahr")  # the clinical scores a manifest may hold
CDR_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0)  # Clinical Dementia Rating (global)
PATH_COLUMNS: tuple[str, ...] = ("image", "mask", "effect_map", "labels")
IMAGE_CHECKS: tuple[str, ...] = ("none", "exists", "header", "data")


@dataclass(frozen=True)
class ManifestProblem:
    """One problem found in a manifest.

    Attributes:
        row: 1-based data row (row 1 is line 2 of the file), or ``None`` for file-level problems.
        column: the column concerned, or ``None``.
        message: what is wrong and what to do.
    """

    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row} (line {self.row + 1})")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        prefix = ", ".join(where) if where else "file"
        return f"{prefix}: {self.message}"


class ManifestError(ValueError):
    """Raised when a manifest has problems; ``problems`` lists all of them."""

    def __init__(self, path: str | os.PathLike[str], problems: Sequence[ManifestProblem]):
        self.path = Path(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"{self.path}: {len(self.problems)} problem(s) in the manifest (see data_manifests/schema.md):\n{lines}"
        )


def _resolve(path_value: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(path_value))
    return path if path.is_absolute() else base_dir / path


def _is_blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _check_file(path: Path, check: str, is_mask: bool = False) -> tuple[list[str], bool]:
    """Problem messages for an image or mask file at the ``check`` level (see :data:`IMAGE_CHECKS`).

    ``header`` and ``data`` run :mod:`brainage_core.scan_checks`, the same checks the loaders run.

    Returns:
        The messages, and whether the file exists with a usable header (so its grid can be compared).
    """
    if check == "none":
        return [], False
    if not path.is_file():
        return [f"file not found: {path} (paths are relative to the manifest's folder)"], False
    if check == "exists":
        return [], False
    problems = header_problems(path)
    if problems:
        return problems, False
    return (data_problems(path, is_mask=is_mask) if check == "data" else []), True


def manifest_folder(path: str | os.PathLike[str]) -> Path:
    """The folder that a manifest's relative paths are resolved against.

    The folder of the manifest *file* (symbolic links followed): a manifest linked from
    elsewhere still finds the images written beside it. Validation and every loader use this.
    """
    return Path(path).expanduser().resolve().parent


def _numeric(frame: pd.DataFrame, column: str, problems: list[ManifestProblem]) -> pd.Series:
    """Parse ``column`` as numbers, recording a problem per non-numeric, non-blank cell."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    for index in np.flatnonzero(values.isna().to_numpy() & ~raw.map(_is_blank).to_numpy()):
        problems.append(ManifestProblem(int(index) + 1, column, f"{raw.iloc[index]!r} is not a number"))
    return values


def validate_frame(
    frame: pd.DataFrame, base_dir: str | os.PathLike[str], check_images: str = "header"
) -> list[ManifestProblem]:
    """Check a manifest already read as a table of strings; return every problem found.

    Args:
        frame: the manifest, one row per scan, columns as read from the CSV (``dtype=str``).
        base_dir: folder that relative image and mask paths are resolved against.
        check_images: ``"data"`` runs every check the loaders run (header, voxel data: truncation,
            NaN/Inf, constant image, empty mask; mask on the image's grid), ``"header"`` the
            header checks only, ``"exists"`` only checks the files exist, ``"none"`` skips files.

    Returns:
        The problems, in row order; empty when the manifest is valid.
    """
    if check_images not in IMAGE_CHECKS:
        raise ValueError(f"check_images must be one of {IMAGE_CHECKS}, got {check_images!r}")
    base_dir = Path(base_dir)
    problems: list[ManifestProblem] = []
    if len(frame) == 0:
        problems.append(ManifestProblem(None, None, "the manifest has a header but no rows: add one row per scan"))
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    for column in missing:
        problems.append(ManifestProblem(None, column, "required column is missing"))
    present = set(frame.columns)

    if "age" in present:
        ages = _numeric(frame, "age", problems)
        for index, (raw, age) in enumerate(zip(frame["age"], ages)):
            if _is_blank(raw):
                problems.append(ManifestProblem(index + 1, "age", "age is missing"))
            elif not math.isnan(age) and not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
                problems.append(
                    ManifestProblem(index + 1, "age", f"age {age:g} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years")
                )
    if "sex" in present:
        for index, sex in enumerate(frame["sex"]):
            if _is_blank(sex) or str(sex).strip() not in SEXES:
                problems.append(ManifestProblem(index + 1, "sex", f"sex {sex!r} is not one of M, F"))
    if "group" in present:
        for index, group in enumerate(frame["group"]):
            if _is_blank(group) or str(group).strip() not in KNOWN_GROUPS:
                problems.append(
                    ManifestProblem(
                        index + 1, "group", f"unknown group {group!r}; use one of {', '.join(KNOWN_GROUPS)}"
                    )
                )
    if "subject_id" in present:
        for index, subject in enumerate(frame["subject_id"]):
            if _is_blank(subject):
                problems.append(ManifestProblem(index + 1, "subject_id", "subject_id is missing"))
    unreadable_rows: set[int] = set()  # rows whose image or mask header is unusable: no grid check
    for column in (c for c in PATH_COLUMNS if c in present):
        for index, value in enumerate(frame[column]):
            if _is_blank(value):
                if column == "image":
                    problems.append(ManifestProblem(index + 1, column, "image path is missing"))
                continue
            # Effect maps and label images are auxiliary outputs, checked for existence only.
            check = "exists" if column in ("effect_map", "labels") and check_images != "none" else check_images
            messages, header_ok = _check_file(_resolve(str(value).strip(), base_dir), check, is_mask=column == "mask")
            problems.extend(ManifestProblem(index + 1, column, message) for message in messages)
            if column in ("image", "mask") and not header_ok:
                unreadable_rows.add(index)
    if {"image", "mask"} <= present and check_images in ("header", "data"):
        for index, (image, mask) in enumerate(zip(frame["image"], frame["mask"])):
            if _is_blank(image) or _is_blank(mask) or index in unreadable_rows:
                continue
            for message in grid_problems(_resolve(str(image).strip(), base_dir), _resolve(str(mask).strip(), base_dir)):
                problems.append(ManifestProblem(index + 1, "mask", message))
    if {"subject_id", "image"} <= present:
        first_row: dict[tuple[str, str], int] = {}
        for index, key in enumerate(zip(frame["subject_id"], frame["image"])):
            if key in first_row:
                problems.append(
                    ManifestProblem(
                        index + 1,
                        "subject_id",
                        f"duplicate of row {first_row[key]}: subject {key[0]!r} with the same image {key[1]!r}",
                    )
                )
            else:
                first_row[key] = index + 1
    if "split" in present:
        for index, split in enumerate(frame["split"]):
            if not _is_blank(split) and str(split).strip() not in KNOWN_SPLITS:
                problems.append(
                    ManifestProblem(
                        index + 1,
                        "split",
                        f"unknown split {split!r}; use one of {', '.join(KNOWN_SPLITS)} or leave blank",
                    )
                )
        if "subject_id" in present:
            problems.extend(_split_leakage(frame))
    if "fold" in present:
        folds = _numeric(frame, "fold", problems)
        for index, fold in enumerate(folds):
            if not math.isnan(fold) and (fold < 0 or fold != int(fold)):
                problems.append(ManifestProblem(index + 1, "fold", f"fold {fold:g} is not a non-negative integer"))
    for column, (low, high) in SCORE_RANGES.items():
        if column in present:
            for index, score in enumerate(_numeric(frame, column, problems)):
                if not math.isnan(score) and not low <= score <= high:
                    problems.append(
                        ManifestProblem(index + 1, column, f"{column} {score:g} is outside its range {low:g}-{high:g}")
                    )
    if "cdr" in present:
        for index, cdr in enumerate(_numeric(frame, "cdr", problems)):
            if not math.isnan(cdr) and cdr not in CDR_VALUES:
                problems.append(
                    ManifestProblem(
                        index + 1, "cdr", f"CDR {cdr:g} is not one of {', '.join(f'{v:g}' for v in CDR_VALUES)}"
                    )
                )
    return sorted(problems, key=lambda p: (p.row is not None, p.row or 0))


def _split_leakage(frame: pd.DataFrame) -> list[ManifestProblem]:
    """One problem per row of a subject whose scans sit in more than one split."""
    problems = []
    splits = frame["split"].map(lambda s: None if _is_blank(s) else str(s).strip())
    by_subject = splits.groupby(frame["subject_id"]).agg(lambda s: sorted(set(s.dropna())))
    leaking = {subject: values for subject, values in by_subject.items() if len(values) > 1}
    for index, (subject, split) in enumerate(zip(frame["subject_id"], splits)):
        if subject in leaking:
            problems.append(
                ManifestProblem(
                    index + 1,
                    "split",
                    f"subject {subject!r} appears in several splits ({', '.join(leaking[subject])}): "
                    f"this row is in {split!r}; a subject must stay in one split (data leakage)",
                )
            )
    return problems


def _check_given(path: str | os.PathLike[str] | None) -> Path:
    if path is None or str(path).strip() in ("", "None"):
        raise ValueError("no manifest given: set data.manifest (e.g. --set data.manifest=path/to/manifest.csv)")
    return Path(path).expanduser()


def _read_raw(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the manifest CSV file inside it (e.g. {path / 'manifest.csv'})")
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            header_line = stream.readline()
    except UnicodeDecodeError as error:
        raise ManifestError(path, [ManifestProblem(None, None, f"not a UTF-8 text CSV file ({error})")]) from error
    header = next(csv.reader([header_line]), [])
    problems = []
    if len(header) <= 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if separator in header_line:
                problems.append(
                    ManifestProblem(
                        None,
                        None,
                        f"the header is separated by {name}, not commas: save the manifest as a comma-separated CSV",
                    )
                )
                break
    names = [column.strip() for column in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    for name in repeated:
        problems.append(
            ManifestProblem(None, name, f"column appears {names.count(name)} times in the header; keep one")
        )
    if problems:
        raise ManifestError(path, problems)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(path, [ManifestProblem(None, None, f"not a readable CSV file ({error})")]) from error
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame.map(lambda value: value.strip() if isinstance(value, str) else value)


def read_manifest_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The manifest CSV as a table of stripped strings, not validated (see :func:`validate_frame`).

    Raises:
        FileNotFoundError: the file does not exist.
        ManifestError: it is not a readable comma-separated UTF-8 CSV, or repeats a column.
    """
    return _read_raw(_check_given(path))


def validate_manifest(path: str | os.PathLike[str], check_images: str = "header") -> list[ManifestProblem]:
    """Read the manifest CSV at ``path`` and return every problem found (empty if valid).

    Args:
        path: the manifest CSV.
        check_images: see :func:`validate_frame`.
    """
    path = _check_given(path)
    try:
        frame = _read_raw(path)
    except ManifestError as error:
        return error.problems
    return validate_frame(frame, manifest_folder(path), check_images=check_images)


def read_manifest(path: str | os.PathLike[str], check_images: str = "header") -> pd.DataFrame:
    """Read and validate a manifest; return it with typed columns and absolute paths.

    Args:
        path: the manifest CSV.
        check_images: see :func:`validate_frame`.

    Returns:
        One row per scan; ``age`` and scores as floats, ``fold`` as nullable integers,
        ``image`` / ``mask`` / ``effect_map`` as absolute path strings.

    Raises:
        FileNotFoundError: the manifest file does not exist.
        ManifestError: the manifest has problems (all of them are listed).
    """
    path = _check_given(path).resolve()
    frame = _read_raw(path)
    problems = validate_frame(frame, manifest_folder(path), check_images=check_images)
    if problems:
        raise ManifestError(path, problems)
    for column in ("age", "true_gap", *SCORE_RANGES, "cdr"):
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if "fold" in frame.columns:
        frame["fold"] = pd.to_numeric(frame["fold"], errors="coerce").astype("Int64")
    for column in (c for c in PATH_COLUMNS if c in frame.columns):
        frame[column] = [
            str(_resolve(value, manifest_folder(path))) if not _is_blank(value) else "" for value in frame[column]
        ]
    frame.attrs["manifest_path"] = str(path)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a manifest atomically, storing image paths relative to the manifest's folder.

    Args:
        frame: one row per scan with at least the required columns.
        path: destination CSV.

    Returns:
        The path written.
    """
    path = Path(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"cannot write manifest {path}: missing required column(s) {missing}")
    out = frame.copy()
    base = path.parent.resolve()
    for column in (c for c in PATH_COLUMNS if c in out.columns):
        out[column] = [
            os.path.relpath(Path(value).resolve(), base) if Path(str(value)).is_absolute() else value
            for value in out[column].fillna("").astype(str)
        ]
    with atomic_path(path, suffix=".csv") as temp:
        out.to_csv(temp, index=False, float_format="%.6g")
    return path
