"""Which files the project wrote: the only files it will ever delete.

A folder the project writes into (a synthetic cohort, a run directory) carries a record,
``.brainage-owned.json``, listing the files written there by the project, relative to the
folder. Paths are added to the record *before* the files are written, so an interrupted write
still leaves a file the project can prove it made. Clearing a folder deletes recorded files only;
any other file (a user's, planted there by hand) stops the operation with an error that names the
folder and the files, before anything is deleted.

Temporary files of :func:`~brainage_core.fileio.atomic_path` (``.tmp-<name>.*``) next to a
recorded file count as the project's too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from brainage_core.fileio import TEMP_PREFIX, atomic_path

__all__ = [
    "RECORD_NAME",
    "claim",
    "clear_owned_folder",
    "foreign_files",
    "owned_files",
    "refuse_foreign_files",
    "remove_owned",
    "remove_stale_temp_files",
]

RECORD_NAME = ".brainage-owned.json"


def _record_path(folder: Path) -> Path:
    return Path(folder) / RECORD_NAME


def owned_files(folder: str | os.PathLike[str]) -> set[str]:
    """Relative paths (POSIX) recorded as written by the project in ``folder``."""
    record = _record_path(Path(folder))
    if not record.is_file():
        return set()
    try:
        names = json.loads(record.read_text()).get("files", [])
    except (json.JSONDecodeError, AttributeError):
        return set()
    return {str(name) for name in names}


def _write_record(folder: Path, names: set[str]) -> None:
    with atomic_path(_record_path(folder)) as temp:
        temp.write_text(json.dumps({"files": sorted(names)}, indent=1) + "\n")


def claim(folder: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]]) -> None:
    """Record ``paths`` (absolute or relative to ``folder``) as written by the project.

    Call it before writing the files. The folder is created if missing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder.resolve()
    names = owned_files(folder)
    for path in paths:
        path = Path(path)
        absolute = path if path.is_absolute() else base / path
        names.add(Path(os.path.relpath(absolute.resolve(), base)).as_posix())
    _write_record(folder, names)


def _is_own_temp(relative: str, owned: set[str]) -> bool:
    """A ``.tmp-<name>.*`` file next to a recorded ``<name>`` (or the record itself)."""
    path = Path(relative)
    if not path.name.startswith(TEMP_PREFIX):
        return False
    rest = path.name[len(TEMP_PREFIX) :]
    siblings = {Path(name).name for name in owned if Path(name).parent == path.parent} | {RECORD_NAME}
    return any(rest.startswith(sibling + ".") for sibling in siblings)


def foreign_files(folder: str | os.PathLike[str]) -> list[str]:
    """Files under ``folder`` (recursively) that no record in it or below lists; sorted, relative.

    A sub-folder may carry its own record (e.g. a report folder inside a run directory).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    records = {record.parent: owned_files(record.parent) for record in folder.rglob(RECORD_NAME)}
    foreign = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        if path.name == RECORD_NAME:
            continue
        if not any(_owned_by(path, base, owned) for base, owned in records.items()):
            foreign.append(path.relative_to(folder).as_posix())
    return foreign


def _owned_by(path: Path, base: Path, owned: set[str]) -> bool:
    try:
        relative = path.relative_to(base).as_posix()
    except ValueError:
        return False
    return relative in owned or _is_own_temp(relative, owned)


def remove_owned(folder: str | os.PathLike[str], relative_paths: Iterable[str]) -> None:
    """Delete those of ``relative_paths`` that the record lists (and drop them from it); refuse any other.

    The record itself goes when it lists nothing more.
    """
    folder = Path(folder)
    owned = owned_files(folder)
    removed = set()
    for relative in relative_paths:
        if relative not in owned and not _is_own_temp(relative, owned):
            raise PermissionError(f"{folder / relative} was not written by brainage; not deleting it")
        (folder / relative).unlink(missing_ok=True)
        removed.add(relative)
    remaining = owned - removed
    if not remaining:
        _record_path(folder).unlink(missing_ok=True)
    elif remaining != owned:
        _write_record(folder, remaining)


def refuse_foreign_files(folder: str | os.PathLike[str], action: str) -> None:
    """Raise before ``action`` (e.g. ``"write a synthetic cohort"``) if ``folder`` holds files the project did not write.

    Raises:
        FileExistsError: naming the folder and up to five of the files.
    """
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{folder} holds files that brainage did not write ({shown}), so it will not {action} there: "
            "move those files away, or choose another (empty or new) folder"
        )


def clear_owned_folder(folder: str | os.PathLike[str], what: str, remove_folder: bool = True) -> None:
    """Delete everything the project wrote in ``folder`` after checking nothing else is there.

    Args:
        folder: the folder to clear.
        what: what the folder holds, for the error message (e.g. ``"a run directory"``).
        remove_folder: also remove ``folder`` and its sub-folders once they are empty.

    Raises:
        FileExistsError: the folder holds files the project did not write (nothing is deleted);
            the message names the folder and up to five of the files.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another path")
    refuse_foreign_files(folder, f"replace {what}")
    for path in sorted(folder.rglob("*"), reverse=True):
        if (path.is_file() or path.is_symlink()) and path.name != RECORD_NAME:
            path.unlink()
    for record in sorted(folder.rglob(RECORD_NAME), reverse=True):
        record.unlink()
    if remove_folder:
        for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            path.rmdir()
        folder.rmdir()


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left in ``folder`` (not recursive) by an interrupted atomic write.

    Only ``.tmp-<name>.*`` files whose ``<name>`` the record lists (or the record itself) are
    removed: those are the project's. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned = owned_files(folder)
    removed = []
    for path in folder.glob(TEMP_PREFIX + "*"):
        if path.is_file() and _is_own_temp(path.name, owned):
            path.unlink()
            removed.append(path)
    return removed
