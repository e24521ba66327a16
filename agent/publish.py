"""Putting a verified output in its final place without destroying anything.

An output that exists belongs to someone: it is replaced only when the job says
``overwrite: true`` or when it is this same job's own earlier output (a retry). Ownership is an
extended attribute set on what we publish (``user.ffrtmp.job``); where the filesystem has no
extended attributes nothing is known to be ours and only ``overwrite`` replaces. A file is
linked into place (``link`` fails if the name was taken meanwhile), an HLS directory renamed
into place; with overwrite a file is replaced atomically and an old directory moved aside and
removed after the swap."""

from __future__ import annotations

import contextlib
import os
import time

from ffrtmp.rundir import remove_path

OWNER_XATTR = "user.ffrtmp.job"


class OutputExists(Exception):
    """The final output exists and is not this job's to replace."""


def owner(path: str) -> str | None:
    try:
        return os.getxattr(path, OWNER_XATTR, follow_symlinks=False).decode(errors="replace")
    except OSError:
        return None


def taken(final: str, job_id: str) -> bool:
    """Whether ``final`` exists and is not this job's own earlier output."""
    return os.path.lexists(final) and owner(final) != job_id


def _mark(path: str, job_id: str) -> None:
    with contextlib.suppress(OSError):  # no xattrs here: the output is simply not known as ours
        os.setxattr(path, OWNER_XATTR, job_id.encode(), follow_symlinks=False)


def publish(final: str, tmp: str, job_id: str, overwrite: bool) -> None:
    """Move ``tmp`` to ``final``; raise OutputExists (and keep ``tmp``) if that would replace
    what is not ours to replace."""
    _mark(tmp, job_id)
    mine = overwrite or not taken(final, job_id)
    if not mine:
        raise OutputExists(final)
    if os.path.isdir(tmp):
        old = None
        if os.path.lexists(final):
            old = f"{final}.old-{os.getpid()}-{int(time.time())}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old:
            remove_path(old)
    elif os.path.lexists(final):
        os.replace(tmp, final)
    else:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise OutputExists(final) from None
        os.unlink(tmp)
