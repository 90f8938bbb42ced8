"""Opening the shared database from vx11ctl without ever creating or migrating it.

The daemons create the database and apply migrations when they start (as their own
user, with the right owner and mode); ``vx11ctl db migrate`` is the one command that
does it on purpose. Every other command opens the file that is there, read-only when
it only reads, and a missing file is a one-line error (exit 69), not a fresh empty DB.
"""

from __future__ import annotations

import os

from .. import config, db
from ..errors import DbMissing


def open_db(cfg: config.Config, *, write: bool = False) -> db.Database:
    """The existing database of ``cfg``, read-only unless ``write``; DbMissing if absent."""
    path = cfg.db.path
    if not os.path.exists(path):
        raise DbMissing(f"{path}: no database there (vx11-madre creates it when it "
                        f"starts; `vx11ctl db migrate` creates it by hand); check db.path "
                        f"in {cfg.path}")
    return db.Database.from_config(cfg, readonly=not write)
