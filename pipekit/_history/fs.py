"""The run history's files on disk: private folders, and telling a full disk from a corrupt file."""

from __future__ import annotations

import os
from pathlib import Path

from pipekit.exceptions import UsageError

__all__ = ["DIRNAME", "HistoryUnwritable", "database_damaged", "explain_write_error", "make_private_dir"]

DIRNAME = ".pipekit"


def make_private_dir(folder: Path) -> None:
    """Create a folder of ``.pipekit/`` (owner only); ``.pipekit/`` itself gets a ``.gitignore`` that
    keeps all of it out of git, as pytest does for ``.pytest_cache``."""
    if folder.is_symlink():
        raise UsageError(
            f"{folder} is a symbolic link (to {os.readlink(folder)}); pipekit keeps its run history only"
            " in a real folder. Remove the link"
        )
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif folder.name == DIRNAME and folder.stat().st_mode & 0o077:
        os.chmod(folder, 0o700)  # made by someone else (an engine's mount point): make it private
    ignore = folder / ".gitignore"
    if folder.name == DIRNAME and not ignore.exists():
        ignore.write_text("# created by pipekit: its run history stays out of version control\n*\n")


def database_damaged(e: Exception) -> bool:
    """Whether SQLite says the file itself is damaged (and not that it cannot write it)."""
    text = str(e).lower()
    return "not a database" in text or "malformed" in text or "encrypted" in text


def explain_write_error(e: Exception, folder: Path) -> str:
    """What a user reads when the history in ``folder`` cannot be written: SQLite's words, and a
    full disk said as such."""
    import shutil

    text = str(e)
    try:
        full = shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        full = False
    if full or "full" in text.lower() or getattr(e, "errno", None) == 28:
        return f"the disk is full ({text}); free some space"
    return text


class HistoryUnwritable(UsageError):
    """The history's database is intact but cannot be written now (a full disk)."""
