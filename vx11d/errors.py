"""The few exception classes vx11d raises on purpose."""

EX_USAGE = 2  # what argparse exits with; vx11ctl uses it for any bad command-line input
EX_CONFIG = 78  # sysexits.h: configuration error; systemd shows it as status=78/CONFIG
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75


class Vx11Error(Exception):
    """Base class: an error vx11d reports to a person as one clear line.

    ``exit_code`` is what ``vx11ctl`` exits with when this error ends a command.
    """

    exit_code = 1


class ConfigError(Vx11Error):
    """A config file is unreadable or a key in it is wrong."""

    exit_code = EX_CONFIG
    noun = "config"  # what a person is told is wrong: "config /etc/vx11/vx11.yml: ..."

    def __init__(self, path: str, key: str, reason: str):
        self.path, self.key, self.reason = path, key, reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")


class DbError(Vx11Error):
    """The database could not do what was asked (after retries).

    ``cause`` is a short stable code (for /health, JSON errors and metric labels),
    ``reason`` a few words a person reads; the message says what, where and what to do.
    """

    cause = "db_error"
    reason = "the database failed"


class DbIntegrityError(DbError):
    """A constraint (unique, check, foreign key, append-only trigger) refused a write."""

    cause = "constraint"
    reason = "a constraint refused the write"


class DbUnavailable(DbError):
    """A host fault keeps the database from serving; it passes by itself or by an operator.

    Callers answer "try again later" (HTTP 503 + Retry-After) and retry; never a crash.
    """

    cause = "db_unavailable"
    reason = "the database is unavailable"
    exit_code = EX_TEMPFAIL


class DbBusy(DbUnavailable):
    """The database stayed locked past the caller's deadline."""

    exit_code = EX_TEMPFAIL
    cause = "locked"
    reason = "another process holds the database write lock"


class DbReadOnly(DbUnavailable):
    """The DB file, its directory or its filesystem is read-only."""

    cause = "read_only"
    reason = "the state directory is read-only"


class DbFull(DbUnavailable):
    """The filesystem holding the DB is full (SQLITE_FULL, or no space on it)."""

    cause = "disk_full"
    reason = "the disk holding the database is full"


class DbMissing(DbUnavailable):
    """The DB file is missing: deleted under a running daemon, or never created here."""

    cause = "db_missing"
    reason = "the database file is missing"
    exit_code = EX_UNAVAILABLE


class DbReplaced(DbMissing):
    """The path now names another file than the one this process opened."""

    cause = "db_replaced"
    reason = "the database file was replaced"


class DbCorrupt(DbUnavailable):
    """The file is not a database or fails its own checks (SQLITE_CORRUPT/NOTADB)."""

    cause = "corrupt"
    reason = "the database file is corrupt"
    exit_code = 1  # a problem found, not one that passes by itself


class DbIoError(DbUnavailable):
    """An I/O error on the DB that is neither a full disk nor a read-only filesystem."""

    cause = "io_error"
    reason = "I/O error on the database"


class SystemdError(Vx11Error):
    """systemd refused or failed an operation on a unit."""

    exit_code = EX_UNAVAILABLE


class SandboxError(Vx11Error):
    """The throwaway systemd container could not be booted or driven."""


class InputError(Vx11Error):
    """Input from outside (HTTP, CLI, files) is malformed; the message says how."""

    exit_code = EX_USAGE


class UsageError(InputError):
    """A vx11ctl command line that does not parse (unknown flag, missing action)."""

    def __init__(self, message: str, usage: str = ""):
        self.usage = usage
        super().__init__(message)


class StaleMountNamespace(Vx11Error):
    """The state dir is writable again, but this process's mount namespace (made while
    it was read-only) still sees it read-only: only a restart picks the change up."""
