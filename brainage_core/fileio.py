"""Atomic file writes: a reader never sees a half-written file.

Everything the package writes (manifests, cached volumes, NIfTI files, checkpoints, JSON
results) goes through :func:`atomic_path`: the content is written to a temporary file in the
destination folder and renamed over the destination only once it is complete. An interrupted
write leaves at most a ``.tmp-*`` file that no reader trusts and the next write removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "sha256_file", "write_json"]

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write to; rename it onto ``destination`` on success.

    Args:
        destination: final path of the file. Its parent folder is created if missing.
        suffix: suffix for the temporary file, for writers that infer the format from the
            name (e.g. ``".nii.gz"`` for nibabel, ``".npz"`` for numpy).

    Yields:
        A path in the destination's folder. On an exception inside the ``with`` block the
        temporary file is removed and ``destination`` is left untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(
        prefix=TEMP_PREFIX + destination.name + ".", suffix=suffix, dir=destination.parent
    )
    os.close(handle)
    temp_path = Path(temp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    temp_path.chmod(0o666 & ~umask)
    try:
        yield temp_path
        os.replace(temp_path, destination)
    finally:
        temp_path.unlink(missing_ok=True)


def write_json(destination: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON atomically."""
    with atomic_path(destination) as temp:
        temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
