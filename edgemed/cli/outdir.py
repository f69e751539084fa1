"""The output directory of ``run`` and ``demo``: one run's complete set of files, or none.

A run writes into a fresh staging directory beside ``--out`` and renames it into place
at the end, so ``--out`` never holds a mix of two runs (two runs into one folder used to
leave one run's ``result.json`` beside the other's ``mask.nii.gz``) nor files left from
an earlier run. ``--out`` is checked before the first input is read: a mistyped or
read-only folder fails at once, not after minutes of inference.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from types import TracebackType

from edgemed.cli.signals import ignored
from edgemed.errors import OutputError, UsageError

__all__ = ["OutputDir", "discard_unpublished", "looks_like_results"]

#: Top-level names that mark a directory as edgemed's results (one input: result.json;
#: several: index.json). ``--overwrite`` replaces only such a directory (or an empty one).
RESULT_MARKERS = ("result.json", "index.json")

_STAGING = "edgemed-staging"
_OLD = "edgemed-old"
# Replace-and-retry rounds when another run keeps publishing into the same --out.
_PUBLISH_TRIES = 8


# Staging directories not yet published or discarded. An interrupt can land between
# ``mkdir`` and the ``with`` block taking charge (no ``__exit__`` runs then), so the CLI's
# interrupt handler sweeps this set; a path is added before its directory exists.
_unpublished: set[Path] = set()


def discard_unpublished() -> None:
    """Remove every staging directory no run published (the CLI calls this on an
    interrupt, whatever point the run had reached)."""
    for path in list(_unpublished):
        shutil.rmtree(path, ignore_errors=True)
        _unpublished.discard(path)


def looks_like_results(path: Path) -> bool:
    """Whether ``path`` is empty or holds edgemed results (a marker file at its top)."""
    names = os.listdir(path)
    return not names or any(m in names for m in RESULT_MARKERS)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename still stands
        pass
    finally:
        os.close(fd)


def _hidden_sibling(target: Path, kind: str) -> Path:
    # Hidden, beside --out (same file system: rename is atomic), named after it so a
    # leftover from a killed run is recognisable; the name is capped well below NAME_MAX.
    return target.parent / f".{target.name[:80]}.{kind}-{secrets.token_hex(6)}"


class OutputDir:
    """A staging directory that becomes ``--out`` as a whole (:meth:`publish`) or is
    removed (:meth:`discard`; also on leaving the ``with`` block unpublished).

    Args:
        out: the ``--out`` argument.
        overwrite: replace an existing ``--out`` holding earlier results.

    Raises:
        UsageError: ``--out`` is empty.
        OutputError: ``OUTPUT_NOT_A_DIRECTORY`` (an existing file), ``OUTPUT_EXISTS``
            (holds files and no ``overwrite``, or files edgemed did not write),
            ``OUTPUT_WRITE_FAILED`` (read-only, a mount point, the current directory,
            or nothing can be created beside it).
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        if not str(out).strip():
            raise UsageError("--out is empty: name the directory for the results")
        given = Path(out)
        # A symlinked --out: the directory it points at is what gets replaced.
        self.target = Path(os.path.realpath(given))
        self.overwrite = overwrite
        self._check()
        self.published = False
        self.path = _hidden_sibling(self.target, _STAGING)
        _unpublished.add(self.path)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.path, 0o777)  # the umask decides, as for any new folder
        except OSError as exc:
            _unpublished.discard(self.path)
            raise OutputError(
                f"cannot create the output directory's parent or a folder beside it "
                f"({exc.strerror or exc})",
                path=given,
            ) from exc

    def _check(self) -> None:
        t = self.target
        try:
            st = os.stat(t)
        except FileNotFoundError:
            return
        except NotADirectoryError as exc:
            raise OutputError("a part of --out's path is a file, not a directory", path=t) from exc
        except OSError as exc:
            raise OutputError(f"--out cannot be examined ({exc.strerror})", path=t) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(
                "--out is an existing file, not a directory",
                code="OUTPUT_NOT_A_DIRECTORY",
                path=t,
            )
        try:
            cwd = Path.cwd().resolve()
        except OSError:  # the current directory was removed: it cannot be --out either
            cwd = None
        if cwd is not None and (t == cwd or t in cwd.parents):
            raise OutputError(
                "--out is the current directory or holds it; give a directory for the "
                "results alone",
                path=t,
            )
        if os.path.ismount(t):
            raise OutputError(
                "--out is a mount point, which cannot be replaced as a whole; give a "
                "directory inside it",
                path=t,
            )
        if not os.access(t, os.W_OK | os.X_OK):
            raise OutputError("--out is not writable", path=t)
        try:
            names = os.listdir(t)
        except OSError as exc:
            raise OutputError(f"--out cannot be listed ({exc.strerror})", path=t) from exc
        if names:
            if not any(m in names for m in RESULT_MARKERS):
                raise OutputError(
                    "--out holds files edgemed did not write (no result.json or "
                    "index.json); give a new or empty directory",
                    code="OUTPUT_EXISTS",
                    path=t,
                )
            if not self.overwrite:
                raise OutputError(
                    "--out already holds results; pass --overwrite to replace them as a "
                    "whole, or give a new directory",
                    code="OUTPUT_EXISTS",
                    path=t,
                )

    # -- the end of a run ----------------------------------------------------------------

    def clear(self) -> None:
        """Empty the staging directory (a single input that failed leaves nothing)."""
        for entry in os.scandir(self.path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)

    def publish(self) -> Path:
        """Rename the staging directory to ``--out``; returns ``--out``.

        Without ``overwrite``, an ``--out`` that another run filled meanwhile is
        ``OUTPUT_EXISTS`` and this run's files are removed. With it, the directory found
        there is renamed aside and removed after the new one is in place, so ``--out``
        is at every moment one run's complete set (or, between two renames, absent).
        """
        # Signals wait: an interrupt between moving the old set aside and the new one in
        # would lose both.
        with ignored():
            return self._publish()

    def _publish(self) -> Path:
        t, old = self.target, []
        try:
            for _ in range(_PUBLISH_TRIES):
                try:
                    self._keep_mode_of(t)
                    os.rename(self.path, t)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # --out is there
                        raise OutputError(
                            f"cannot move the results into place ({exc.strerror})", path=t
                        ) from exc
                if not self.overwrite:
                    try:  # an empty directory (one rename cannot replace everywhere)
                        os.rmdir(t)
                        continue
                    except OSError:
                        pass
                    raise OutputError(
                        "another run wrote --out while this one ran; this run's results "
                        "were not kept",
                        code="OUTPUT_EXISTS",
                        path=t,
                    )
                try:
                    ours = looks_like_results(t)
                except FileNotFoundError:  # another run moved it aside just now
                    continue
                if not ours:
                    raise OutputError(
                        "--out now holds files edgemed did not write; nothing replaced",
                        code="OUTPUT_EXISTS",
                        path=t,
                    )
                aside = _hidden_sibling(t, _OLD)
                try:
                    os.rename(t, aside)
                    old.append(aside)
                except FileNotFoundError:  # another run moved it first: try again
                    pass
            else:
                raise OutputError(
                    "other runs kept replacing --out; this run's results were not kept",
                    code="OUTPUT_EXISTS",
                    path=t,
                )
        except BaseException:
            self.discard()
            raise
        finally:
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        self.published = True
        _unpublished.discard(self.path)
        _fsync_dir(t.parent)  # the rename survives a power cut
        return t

    def _keep_mode_of(self, t: Path) -> None:
        # Replacing an existing --out: keep the permissions it was given (a
        # group-writable drop folder stays one).
        with contextlib.suppress(OSError):  # nothing there yet: the umask's mode stays
            os.chmod(self.path, stat.S_IMODE(os.stat(t).st_mode))

    def discard(self) -> None:
        """Remove the staging directory and whatever is in it."""
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
            _unpublished.discard(self.path)

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()
