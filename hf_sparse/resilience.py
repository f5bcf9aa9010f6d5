"""Crash-safe outputs and resumable training.

- :func:`atomic_write_text` / :func:`atomic_folder`: a file or a whole checkpoint folder is written under a temporary
  name next to its target and renamed into place only once complete, so a crash, a kill or a full disk never leaves
  a half-written file or checkpoint under the real name (the previous version, if any, stays intact until the
  rename). The temporary name carries the writer's process id; :func:`remove_stale_partials` deletes the ones a
  killed job left behind (a SIGKILL runs no cleanup).
- :func:`confined_path`: every file and folder a job writes is named through it, so a name taken from a recipe, a
  report or a model config can never make a job write (or move aside, or delete) anything outside its output folder.
- :class:`CheckpointMarkerCallback`: ``transformers.Trainer`` writes its ``checkpoint-N`` folders file by file, and
  callbacks add their state (pruning masks, low-rank schedules) after it. The marker is the last file written into
  each checkpoint; :func:`last_complete_checkpoint` only ever returns a checkpoint that has it, so a run resumes from
  the last checkpoint that was written completely.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import CheckpointWriteError, quote

__all__ = [
    "CHECKPOINT_MARKER",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_folder",
    "confined_path",
    "remove_stale_partials",
    "CheckpointMarkerCallback",  # noqa: F822  (module __getattr__ builds it on first use)
    "last_complete_checkpoint",
    "is_complete_checkpoint",
]

#: Written last into every Trainer checkpoint folder that is complete.
CHECKPOINT_MARKER = "hf_sparse_checkpoint.json"

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

logger = logging.getLogger(__name__)


def confined_path(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root / part / ...``, proven to stay inside ``root``: the joined path is resolved (``..`` collapsed, every
    symbolic link that exists followed) and must lie in the resolved ``root`` (``root`` itself is refused when parts
    are given: a job never replaces its own output folder).

    Each part must be a relative path without NUL characters. Names are checked for their alphabet when a recipe is
    read (:func:`hf_sparse.config.check_name`); this is the second, independent line: whatever a name is and however
    it was built, a write cannot land outside the output folder.

    Raises:
        CheckpointWriteError: a part is absolute, empty, holds a NUL, or the path resolves outside ``root`` (the
            message names the part and ``root``). Nothing was written.
    """
    base = Path(os.path.abspath(os.fspath(root)))
    target = base
    for part in parts:
        text = os.fspath(part)
        if not isinstance(text, str) or not text or "\0" in text or os.path.isabs(text) or text.startswith("~"):
            raise CheckpointWriteError(
                f"Refusing to write {quote(text)} under {base}: a name inside the output folder must be a relative "
                "path (no leading '/' or '~', no NUL character, not empty)."
            )
        target = target / text
    try:
        resolved_base = base.resolve()
        resolved = target.resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic-link loop: RuntimeError before Python 3.13, OSError after
        raise CheckpointWriteError(f"Refusing to write {quote(str(target))}: it cannot be resolved ({exc}).") from None
    if not parts:
        return resolved
    if resolved == resolved_base or not resolved.is_relative_to(resolved_base):
        raise CheckpointWriteError(
            f"Refusing to write {quote(str(target))}: it resolves to {quote(str(resolved))}, outside the output "
            f"folder {resolved_base} (a '..' in a name, or a symbolic link). Nothing was written."
        )
    return resolved


def _temporary_prefix(path: Path) -> str:
    # The writer's pid in the name tells a leftover of a killed job from the folder of a job still writing.
    return f".{path.name}.{os.getpid()}."


#: ``.<name>.<pid>.<random>.partial`` / ``.tmp`` (written by this module), ``.<name>.<random>.partial`` (by
#: versions before the pid was added) and ``.<name>.<pid>.old`` (a replaced folder not yet deleted).
_TEMPORARY_TAIL = re.compile(r"^(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.(?:partial|tmp)$|^(?P<oldpid>\d+)\.old$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process starts the job: nothing of its own is in flight yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else: not ours to delete
    return True


def remove_stale_partials(folder: str | os.PathLike, names) -> list[Path]:
    """Delete the temporaries that :func:`atomic_folder` / :func:`atomic_write_bytes` left in ``folder`` for the
    targets ``names`` when their writer was killed (SIGKILL, power loss: no ``finally`` runs), and log each.

    Only hidden entries of the exact form ``.<name>.<pid>.<random>.partial|tmp`` (or ``.<name>.<random>.partial``,
    ``.<name>.<pid>.old``) for a ``name`` of ``names`` are touched, and not while process ``pid`` is alive.

    Args:
        folder: The output folder of the job.
        names: The file and folder names the job writes there: strings, or compiled patterns a name must match in
            full (for generated names such as the runs of ``hf-sparse compress``).

    Returns:
        The paths deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    exact = {n for n in names if isinstance(n, str)}
    patterns = [n for n in names if isinstance(n, re.Pattern)]
    removed = []
    for child in folder.iterdir():
        if not child.name.startswith("."):
            continue
        for cut in range(len(child.name) - 1, 1, -1):  # the name may hold dots: try every split
            if child.name[cut] != ".":
                continue
            name, tail = child.name[1:cut], child.name[cut + 1 :]
            match = _TEMPORARY_TAIL.match(tail)
            if match is None or not (name in exact or any(p.fullmatch(name) for p in patterns)):
                continue
            pid = match.group("pid") or match.group("oldpid")
            if pid is not None and _pid_alive(int(pid)):
                logger.info("hf-sparse: %s belongs to running process %s; left in place", child, pid)
                break
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
            logger.info("hf-sparse: removed %s, left by an interrupted save", child)
            removed.append(child)
            break
    return removed


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder, flushed, then renamed over
    ``path``.

    Raises:
        CheckpointWriteError: the write failed (e.g. a full disk); ``path`` is unchanged and no temporary is left.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed, then renamed over ``path``.

    Raises:
        CheckpointWriteError: the write failed (e.g. a full disk); ``path`` is unchanged and no temporary is left.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CheckpointWriteError(f"Writing {path} failed ({exc}); the file was left as it was.") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` when the block ends without an exception.

    An existing ``path`` is replaced only after the new folder is complete (it is moved aside, the new one renamed in,
    then the old one deleted). On an exception, ``KeyboardInterrupt`` included, the temporary folder is removed and
    ``path`` is untouched.

    Raises:
        CheckpointWriteError: writing failed with an ``OSError`` (a full disk, permissions); ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".partial", dir=path.parent))
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"Saving {path} failed ({exc}); nothing was written under that name.") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a Trainer checkpoint whose writing finished (it holds the marker)."""
    return (Path(folder) / CHECKPOINT_MARKER).is_file()


def last_complete_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The ``checkpoint-N`` folder under ``folder`` with the highest step among the complete ones, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = []
    for child in folder.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and is_complete_checkpoint(child):
            steps.append((int(match.group(1)), child))
    return max(steps)[1] if steps else None


def remove_incomplete_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``checkpoint-N`` folders under ``folder`` that lack the marker (left by a crash mid-save)."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.iterdir():
            if _CHECKPOINT_RE.match(child.name) and child.is_dir() and not is_complete_checkpoint(child):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def _checkpoint_marker_callback() -> type:
    # Built on first use: ``transformers.TrainerCallback`` imports the Trainer stack (peft, bitsandbytes: seconds),
    # which the path helpers above do not need.
    from transformers import TrainerCallback

    class CheckpointMarkerCallback(TrainerCallback):
        """Marks each Trainer checkpoint complete once everything, other callbacks' state included, is in it.

        Add it after every other callback that writes into checkpoints (``on_save`` runs in callback order). Only the
        process that saves writes the marker.
        """

        def on_save(self, args, state, control, **kwargs):
            if not args.should_save:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_text(
                    folder / CHECKPOINT_MARKER,
                    json.dumps({"global_step": state.global_step, "complete": True}) + "\n",
                )

    CheckpointMarkerCallback.__module__ = __name__
    CheckpointMarkerCallback.__qualname__ = "CheckpointMarkerCallback"
    return CheckpointMarkerCallback


def __getattr__(name: str):
    if name == "CheckpointMarkerCallback":
        cls = _checkpoint_marker_callback()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
