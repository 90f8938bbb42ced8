"""The few exception classes vx11d raises on purpose."""

EX_CONFIG = 78  # sysexits.h: configuration error; systemd shows it as status=78/CONFIG
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70


class Vx11Error(Exception):
    """Base class: an error vx11d reports to a person as one clear line."""


class ConfigError(Vx11Error):
    """A config file is unreadable or a key in it is wrong."""

    def __init__(self, path: str, key: str, reason: str):
        self.path, self.key, self.reason = path, key, reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")


class DbError(Vx11Error):
    """The database could not do what was asked (after retries)."""


class DbIntegrityError(DbError):
    """A constraint (unique, check, foreign key, append-only trigger) refused a write."""


class DbBusy(DbError):
    """The database stayed locked past the caller's deadline."""


class SystemdError(Vx11Error):
    """systemd refused or failed an operation on a unit."""


class SandboxError(Vx11Error):
    """The throwaway systemd container could not be booted or driven."""


class InputError(Vx11Error):
    """Input from outside (HTTP, CLI, files) is malformed; the message says how."""


class StaleMountNamespace(Vx11Error):
    """The state dir is writable again, but this process's mount namespace (made while
    it was read-only) still sees it read-only: only a restart picks the change up."""
