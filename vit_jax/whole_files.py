"""Files written whole or not at all: each is written under a temporary name beside it and renamed onto its own
name only once every file of the group is written, so a failed or interrupted write (a full disk, a killed
process) leaves the files that were there before as they were."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def written_whole(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yields the temporary paths to write `paths`' contents to; renames them onto `paths` when the block ends
    without an error, and removes them either way."""
    final = [Path(path).expanduser() for path in paths]
    partial = [path.with_name(f".{path.name}.partial") for path in final]
    try:
        yield partial
        for temporary, path in zip(partial, final):
            temporary.replace(path)
    finally:
        for temporary in partial:
            temporary.unlink(missing_ok=True)
