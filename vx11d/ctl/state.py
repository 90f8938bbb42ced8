"""Opening the shared database from vx11ctl without ever creating or migrating it.

The daemons create the database and apply migrations when they start (as their own
user, with the right owner and mode); ``vx11ctl db migrate`` is the one command that
does it on purpose. Every other command opens the file that is there, read-only when
it only reads, and a missing file is a one-line error (exit 69), not a fresh empty DB.
"""

from __future__ import annotations

import glob
import os

from .. import config, db
from ..errors import DbMissing


def missing(cfg: config.Config) -> str:
    """What a missing database at ``cfg.db.path`` means, and what to do about it."""
    path = cfg.db.path
    if not db.existed_here(path):
        return (f"{path}: missing, not created yet (vx11-madre creates it when it first "
                f"starts; check db.path in {cfg.path} if it runs)")
    rescued = sorted(glob.glob(glob.escape(path) + ".rescued-*"))
    copy = f", or the copy a daemon saved: {rescued[-1]}" if rescued else ""
    return (f"{path}: missing, though a vx11 database was there (no daemon re-creates "
            f"it): put a backup back with `vx11ctl db restore FILE`{copy}; or start an "
            "empty one with `vx11ctl db migrate`")


def open_db(cfg: config.Config, *, write: bool = False) -> db.Database:
    """The existing database of ``cfg``, read-only unless ``write``; DbMissing if absent."""
    if not os.path.exists(cfg.db.path):
        raise DbMissing(missing(cfg))
    return db.Database.from_config(cfg, readonly=not write)
