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

    def __init__(self, path: str, key: str, reason: str):
        self.path, self.key, self.reason = path, key, reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")


class DbError(Vx11Error):
    """The database could not do what was asked (after retries)."""


class DbMissing(DbError):
    """The database file does not exist (and the caller must not create it)."""

    exit_code = EX_UNAVAILABLE


class DbIntegrityError(DbError):
    """A constraint (unique, check, foreign key, append-only trigger) refused a write."""


class DbBusy(DbError):
    """The database stayed locked past the caller's deadline."""

    exit_code = EX_TEMPFAIL


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
