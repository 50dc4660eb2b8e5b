"""Atomic writes: a result file is either the old one or the complete new one, never half-written.

Each writer writes to a temporary file in the destination folder, flushes it, then
``os.replace``-s it over the destination (atomic on POSIX and Windows). A set of files that
belong together (an experiment's metrics, summary, claims, parameters and figures) is written
into a temporary sibling folder and swapped in with renames by :func:`replace_folder`, so a
reader never sees an old file beside a new one. A notebook's outputs in a folder shared with
other notebooks (``results/figures/<profile>``) are staged and moved in together at its end by
:class:`OutputSet`.

Temporaries are named ``.<name>.<host>-<pid>.<random>.cmp-partial``. A write that is killed
(kill -9, power loss) leaves its temporary behind; the next write into the same folder removes
every such leftover of this machine whose process is no longer running (:func:`remove_orphans`),
so interrupted runs do not accumulate half-written files. Another machine's temporaries (a
shared file system) are left alone: whether their process runs cannot be seen from here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

#: Suffix of every temporary file or folder this module creates.
TEMPORARY_SUFFIX = ".cmp-partial"
_TEMPORARY_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[^.]+" + re.escape(TEMPORARY_SUFFIX) + r"$")
#: This machine's name as temporaries carry it (letters, digits and dashes).
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temporary_prefix(name: str, pid: int | None = None) -> str:
    """``.<name>.<host>-<pid>.``: how a temporary for ``name`` written by process ``pid`` (default: this one) starts."""
    return f".{name}.{HOST}-{os.getpid() if pid is None else pid}."


def _process_is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries left in ``folder`` by writes whose process has ended; return them.

    Only names of the form ``.<name>.<host>-<pid>.<random>.cmp-partial`` are touched, and only
    when ``<host>`` is this machine and process ``<pid>`` is not running (a live writer's
    temporary is kept).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY_NAME.match(entry.name)
        if not match or match.group("host") != HOST or _process_is_running(int(match.group("pid"))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except FileNotFoundError:  # another process cleaned it first
            pass
    return removed


def _ordinary_mode(existing: Path, folder: bool = False) -> int:
    """The mode of ``existing`` if it exists, else what the umask gives a new file (or folder)."""
    if existing.exists():
        return existing.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _restore_retired(destination: Path) -> None:
    """Put back an old result folder that a killed :func:`replace_folder` had moved aside.

    The swap renames ``path`` into ``.<name>.<host>-<pid>.<random>.cmp-partial/<name>`` and then the
    new folder to ``path``; a kill between the two renames leaves ``path`` missing.
    """
    if destination.exists():
        return
    for candidate in destination.parent.glob(f".{destination.name}.*{TEMPORARY_SUFFIX}"):
        match = _TEMPORARY_NAME.match(candidate.name)
        retired = candidate / destination.name
        if (
            match
            and match.group("host") == HOST
            and not _process_is_running(int(match.group("pid")))
            and retired.is_dir()
        ):
            os.replace(retired, destination)
            return


#: errno values that mean "this place cannot take the write" (full disk, quota, read-only, no
#: permission, file too large, I/O error): re-raised by :func:`write_failure` naming the file.
WRITE_FAILURES = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO")
    if hasattr(errno, name)
)


def write_failure(destination: Path, error: OSError) -> OSError:
    """An ``OSError`` of the same errno (and class) whose message names ``destination``, the cause
    (``No space left on device``, ``Read-only file system``, ...), that the old file is kept, and the fix."""
    while isinstance(error.__cause__, OSError):  # an inner write already named its temporary file
        error = error.__cause__
    cause = error.strerror or os.strerror(error.errno or 0)
    kept = "its previous version is kept unchanged" if destination.exists() else "nothing was written there"
    return OSError(
        error.errno,
        f"cannot write {destination}: {cause} ({kept}); free space on that disk, make the "
        f"folder writable, or write elsewhere (another --output-dir / CMP_RESULTS_DIR / "
        f"CMP_CACHE_DIR)",
    )


@contextlib.contextmanager
def naming_write_failures(destination: Path) -> Iterator[None]:
    """Re-raise a full-disk / read-only / permission ``OSError`` raised in the block as
    :func:`write_failure` of ``destination`` (other errors pass unchanged). For writes that are not
    made through this module (e.g. generated data sets)."""
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_FAILURES:
            raise
        raise write_failure(destination, error) from error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``, on error remove it.

    A write that meets a full disk, a quota, a read-only or unwritable folder fails with an
    ``OSError`` naming ``path`` and the cause (:func:`write_failure`); ``path`` keeps what it held.
    """
    destination = Path(path)
    with naming_write_failures(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(destination.parent)
        handle, temporary = tempfile.mkstemp(
            prefix=temporary_prefix(destination.name), suffix=TEMPORARY_SUFFIX, dir=destination.parent
        )
        os.close(handle)
        temporary_path = Path(temporary)
        try:
            yield temporary_path
            # mkstemp makes owner-only files; give the result the old file's mode, or the umask's default.
            os.chmod(temporary_path, _ordinary_mode(destination))
            os.replace(temporary_path, destination)
        finally:
            if temporary_path.exists():
                temporary_path.unlink()


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    Everything written into the yielded folder becomes the new ``path`` together: the old
    folder is renamed aside, the new one renamed into place, then the old one deleted. On an
    error (or an interruption) ``path`` keeps its old files, untouched, and the temporary
    folder is removed (or, after kill -9, by the next write into the same parent folder).
    A reader never finds old and new files mixed in ``path``.
    """
    destination = Path(path)
    if destination.exists() and not destination.is_dir():
        raise NotADirectoryError(f"{destination} is a file; results need a folder there: move or delete the file")
    if destination.is_dir() and any(
        entry.is_dir() and not entry.name.startswith(".") for entry in destination.iterdir()
    ):
        raise IsADirectoryError(
            f"{destination} holds sub-folders; replace_folder replaces a folder of files as a whole "
            f"and refuses to delete sub-folders: pass the result set's own folder "
            f"(e.g. results/<experiment>/<profile>)"
        )
    with naming_write_failures(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
        _restore_retired(destination)
        remove_orphans(destination.parent)
        staging = Path(
            tempfile.mkdtemp(prefix=temporary_prefix(destination.name), suffix=TEMPORARY_SUFFIX, dir=destination.parent)
        )
    try:
        with naming_write_failures(destination):
            yield staging
        os.chmod(staging, _ordinary_mode(destination, folder=True))  # mkdtemp makes owner-only folders
        if destination.exists():
            retired = Path(
                tempfile.mkdtemp(
                    prefix=temporary_prefix(destination.name), suffix=TEMPORARY_SUFFIX, dir=destination.parent
                )
            )
            os.replace(destination, retired / destination.name)  # the old set, kept whole until the swap
            os.replace(staging, destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class OutputSet:
    """The files one notebook writes into a folder it may share with other notebooks, written as one set.

    ``outputs = OutputSet(folder, "02_cmpm_derivation")`` makes a hidden staging folder inside
    ``folder``; every output goes to ``outputs.path(name)`` (figures via
    :func:`cmp_utils.reporting.plots.save_figure`, tables via :func:`write_csv`); the notebook's last step,
    ``outputs.commit()``, moves them all into ``folder`` with renames, then deletes the files of
    the owner's previous set that the new one lacks (the owner's manifest,
    ``.<owner>.outputs.json``, lists its set). Until ``commit`` nothing in ``folder`` changes: a
    run that fails midway leaves the previous complete set untouched (its staging folder is
    deleted by the next write into ``folder`` once its process has ended), and says so when it
    starts. Other owners' files in ``folder`` are never touched.
    """

    def __init__(self, folder: str | os.PathLike, owner: str, announce: bool = True):
        self.folder = Path(folder)
        self.owner = owner
        with naming_write_failures(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_orphans(self.folder)
            self.staging = Path(
                tempfile.mkdtemp(prefix=temporary_prefix(owner), suffix=TEMPORARY_SUFFIX, dir=self.folder)
            )
        self.committed: list[Path] | None = None
        if announce:
            print(
                f"outputs of {owner} are staged and replace its files in {self.folder} together at the end "
                f"(outputs.commit()); if this run fails before, the previous complete set stays as it was"
            )

    @property
    def manifest(self) -> Path:
        """``<folder>/.<owner>.outputs.json``: the names of the owner's last committed set."""
        return self.folder / f".{self.owner}.outputs.json"

    def path(self, name: str) -> Path:
        """Where to write output ``name`` (a file name, no folders) until :meth:`commit`."""
        if self.committed is not None:
            raise RuntimeError(
                f"the output set of {self.owner} in {self.folder} was already committed; make a new "
                f"OutputSet for another set"
            )
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"output name {name!r} must be a plain file name (no folder, not hidden)")
        return self.staging / name

    def previous_names(self) -> list[str]:
        """The names of the owner's last committed set (empty when none was recorded)."""
        import json

        try:
            names = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return (
            [name for name in names if isinstance(name, str) and Path(name).name == name]
            if isinstance(names, list)
            else []
        )

    def commit(self) -> list[Path]:
        """Move every staged file into the folder (renames), drop the owner's old files the new set
        lacks, record the new set; return the paths. An empty set is refused (nothing was written)."""
        import json

        names = sorted(entry.name for entry in self.staging.iterdir() if entry.is_file())
        if not names:
            raise RuntimeError(
                f"the output set of {self.owner} is empty: nothing was written to outputs.path(...); "
                f"the previous set in {self.folder} is kept"
            )
        stale = [name for name in self.previous_names() if name not in names]
        with naming_write_failures(self.folder):
            write_text(self.manifest, json.dumps(names) + "\n")
            for name in names:
                staged = self.staging / name
                os.chmod(staged, _ordinary_mode(self.folder / name))
                os.replace(staged, self.folder / name)
            for name in stale:
                (self.folder / name).unlink(missing_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.committed = [self.folder / name for name in names]
        print(
            f"{self.owner}: {len(names)} output files replaced in {self.folder} as one set"
            + (f" ({len(stale)} of its old files it no longer makes removed)" if stale else "")
        )
        return self.committed


#: Name of the lock file that marks a folder as being written by one process (:func:`hold_folder`).
LOCK_NAME = ".writer.lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock (:func:`hold_folder`)."""


def _read_lock(lock: Path) -> dict[str, Any]:
    """The holder recorded in ``lock`` (``pid``, ``host``, ``started``); empty when unreadable."""
    import json

    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _locked_error(folder: Path, lock: Path, holder: dict[str, Any]) -> FolderLockedError:
    """The refusal of a second writer, naming the folder, the holder and what to do."""
    return FolderLockedError(
        f"{folder} is being written by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
        f"({holder.get('purpose', 'a run')}, started {holder.get('started', '?')}): two writers would mix their files. "
        f"Wait for it to end, or write elsewhere (another --output-dir)"
    )


def _open_locked(lock: Path) -> int | None:
    """Open (create) ``lock`` and take its exclusive ``flock`` without waiting; the descriptor, or
    None when another open file holds it. Retries when the file was replaced meanwhile (a holder
    that ended deletes it), so the lock taken is always the file at ``lock``."""
    import fcntl

    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return None
        try:
            same_file = os.stat(lock).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return handle
        os.close(handle)


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, purpose: str = "a run") -> Iterator[Path]:
    """Own ``folder`` while the block runs: one writer at a time, every file it holds from that writer.

    The lock is ``<folder>/.writer.lock``, held with an exclusive ``flock`` for the whole block and
    holding the holder's pid, host, start time and purpose. A second writer gets
    :class:`FolderLockedError` naming the folder and the holder. The kernel releases the ``flock``
    of a process that ends however it ends (kill -9 included), so a lock file left behind by a
    process of this machine is taken over, with a message on stderr. A lock file written by another
    machine (a shared file system, where ``flock`` may not reach) is refused, with how to clear it.
    The lock file is removed when the block ends.
    """
    import datetime
    import json
    import sys

    folder = Path(folder)
    with naming_write_failures(folder):
        folder.mkdir(parents=True, exist_ok=True)
        lock = folder / LOCK_NAME
        handle = _open_locked(lock)
    if handle is None:
        raise _locked_error(folder, lock, _read_lock(lock))
    try:
        left = _read_lock(lock)
        if left and left.get("host") != HOST:
            raise FolderLockedError(
                f"{_locked_error(folder, lock, left)}. That machine's process cannot be checked "
                f"from here: if it no longer writes into {folder}, delete {lock}"
            )
        if left:
            print(
                f"taking over the stale lock {lock}: its process {left.get('pid')} on {left.get('host')} (started "
                f"{left.get('started', '?')}) no longer holds it",
                file=sys.stderr,
                flush=True,
            )
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(handle, 0)
        os.write(
            handle,
            json.dumps({"pid": os.getpid(), "host": HOST, "started": started, "purpose": purpose}).encode("utf-8"),
        )
        yield lock
    finally:
        if _read_lock(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)
        os.close(handle)  # releases the flock


def remove_run_folder(folder: str | os.PathLike) -> None:
    """Delete ``folder`` and everything in it, unless a live process holds its writer lock
    (:func:`hold_folder`): then :class:`FolderLockedError` names the folder and the holder, and
    nothing is deleted. A new run that replaces an old one calls this, never a bare ``rmtree``."""
    folder = Path(folder)
    if not folder.exists():
        return
    with hold_folder(folder, purpose="deleting the folder"):
        shutil.rmtree(folder)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | os.PathLike, frame: Any, **to_csv_kwargs: Any) -> Path:
    """Write a pandas DataFrame to CSV atomically (no index unless asked)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **to_csv_kwargs)
    return Path(path)


def write_yaml(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as YAML atomically (keys kept in insertion order)."""
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically, so an interrupted checkpoint never replaces a good one.

    torch writes through a Python file object here: given a path, its C++ writer reports a full
    disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, naming neither
    the file nor the cause; a file object's write raises ``OSError: No space left on device``,
    which :func:`atomic_path` names with the checkpoint's path."""
    import torch

    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            try:
                torch.save(obj, stream)
            except RuntimeError as error:  # torch's writer may mask the write's OSError while closing
                cause = _os_error_in_chain(error)
                if cause is None:
                    raise
                raise cause from error
    return Path(path)


def _os_error_in_chain(error: BaseException) -> OSError | None:
    """The first ``OSError`` among ``error``'s causes and contexts (None when there is none)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def load_torch_cache(path: str | os.PathLike) -> Any | None:
    """``torch.load`` a cache file (weights only); None when it is absent or damaged.

    A damaged file (truncated, overwritten, not a torch file) is deleted with a warning that
    names it, so the caller recomputes and rewrites it instead of failing or using bad data.
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        warnings.warn(
            f"cache file {path} is damaged ({str(error).splitlines()[0][:200]}); deleting it to rebuild it",
            stacklevel=2,
        )
        path.unlink(missing_ok=True)
        return None
