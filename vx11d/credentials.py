"""Named API credentials with scopes: where they live, their file format, add/list/revoke.

A credential is a name, one or more scopes and a secret. Only the SHA-256 digest of
the secret is kept at rest, one file per credential, ``<credentials_dir>/NAME``
(``/etc/vx11/credentials.d`` by default), written by ``vx11ctl token add`` as::

    {"created": "2026-01-03T12:00:00Z", "digest": "sha256:<64 hex>", "scopes": ["read"]}

owner root, group of the directory (``vx11``: the gateway re-reads the set without a
restart), mode 0640, never group-writable nor readable by others. A digest of 256
random bits does not give the secret back, so the gateway's group may read it.

The old single token file (``gateway.token_file``, ``/etc/vx11/token``, the secret in
clear, 0600, handed to the gateway as the systemd credential ``token``) keeps working
as the credential named ``admin`` with scope ``admin``, unless ``credentials.d/admin``
exists. Revoking it empties the file (the unit's ``LoadCredential=`` still finds it);
an empty token file is no credential.

Scopes: ``read`` (GETs of hijas and policy, /health detail, /openapi.json, Hermes's
metrics), ``chat`` (``/v1/*``, ``/vx11/route``), ``operate`` (spawn, stop, policy) and
``admin`` (everything). Which route needs which scope is in ``docs/openapi.json``
(``x-vx11-scope`` of each operation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import ConfigError, InputError

SCOPES = ("read", "chat", "operate", "admin")
LEGACY_NAME = "admin"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_FILE = 4096
MIN_SECRET = 16


class CredentialError(ConfigError):
    """A credential file that cannot be used (that credential is not valid)."""

    noun = "credential"  # the token file is not "config"

    def __init__(self, path: str, reason: str, key: str = "gateway.credentials_dir"):
        super().__init__(path, key, reason)


@dataclass(frozen=True)
class Credential:
    """One valid credential: its name, scopes and the digest of its secret."""

    name: str
    scopes: frozenset[str]
    digest: bytes
    created: str  # ISO 8601 UTC, "" when unknown (the legacy token file)
    path: str

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def digest(secret: str) -> bytes:
    """The SHA-256 of a secret as kept at rest and compared by the gateway."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


def check_name(name: str) -> str:
    """A credential name (also its file name): lower-case letters, digits, ``-``, ``_``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(f"credential name {str(name)[:64]!r}: use 1-64 of a-z 0-9 - _ "
                         "(starting with a letter or digit)")
    return name


def parse_scopes(values: list[str] | str) -> frozenset[str]:
    """``read,chat`` or ``["read", "chat"]`` → the scope set; unknown scopes refused."""
    items = values.split(",") if isinstance(values, str) else [
        p for v in values for p in str(v).split(",")]
    scopes = frozenset(s.strip() for s in items if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise InputError(f"scope {', '.join(unknown) or '(none)'}: choose from "
                         f"{', '.join(SCOPES)}")
    return scopes


def check_mode(path: str, mode: int, allowed: int, key: str = "gateway.credentials_dir"
               ) -> None:
    """Refuse a file whose mode gives more than ``allowed`` (e.g. 0o640)."""
    extra = stat.S_IMODE(mode) & ~allowed & 0o777
    if extra:
        raise CredentialError(path, f"mode {stat.S_IMODE(mode):o} lets others read or write "
                              f"it; it must be {allowed:o} or stricter: chmod {allowed:o} "
                              f"{path}", key=key)


def _read_file(path: str, allowed_mode: int, key: str = "gateway.credentials_dir") -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise CredentialError(path, f"cannot read it: {e.strerror}", key=key) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(path, "not a regular file", key=key)
        check_mode(path, st.st_mode, allowed_mode, key)
        return os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)


def parse(path: str, name: str, raw: bytes) -> Credential:
    """A credential from its file's bytes; CredentialError naming what is wrong."""
    if len(raw) > MAX_FILE:
        raise CredentialError(path, f"larger than {MAX_FILE} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CredentialError(path, f"not a credential (JSON): {e}") from e
    if not isinstance(doc, dict):
        raise CredentialError(path, "not a credential: expected a JSON object")
    unknown = sorted(set(doc) - {"digest", "scopes", "created"})
    if unknown:
        raise CredentialError(path, f"unknown key(s): {', '.join(unknown)[:100]}")
    dg = doc.get("digest")
    if not isinstance(dg, str) or not DIGEST_RE.match(dg):
        raise CredentialError(path, "digest must be sha256:<64 lower-case hex digits>")
    scopes = doc.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise CredentialError(path, f"scopes must be a list of {', '.join(SCOPES)}")
    try:
        scope_set = parse_scopes(scopes)
    except InputError as e:
        raise CredentialError(path, str(e)) from e
    created = doc.get("created", "")
    if not isinstance(created, str) or (created and _parse_time(created) is None):
        raise CredentialError(path, "created must be an ISO 8601 UTC time")
    return Credential(name, scope_set, bytes.fromhex(dg[7:]), created, path)


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def created_ts(created: str) -> float | None:
    """A credential's ``created`` time as epoch seconds (None when unknown)."""
    t = _parse_time(created) if created else None
    return t.timestamp() if t is not None else None


def load_dir(directory: str) -> tuple[list[Credential], list[CredentialError]]:
    """Every usable credential in ``directory``, and an error for each file refused.

    A missing directory holds no credential. Names starting with ``.`` are files being
    written (vx11ctl writes a temporary file, then renames it) and are skipped.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [CredentialError(directory, f"cannot list it: {e.strerror}")]
    creds, errors = [], []
    for name in names:
        if name.startswith("."):
            continue
        path = os.path.join(directory, name)
        try:
            if not NAME_RE.match(name):
                raise CredentialError(path, "file name is not a credential name (a-z 0-9 "
                                      "- _, at most 64)")
            creds.append(parse(path, name, _read_file(path, 0o640)))
        except CredentialError as e:
            errors.append(e)
    return creds, errors


def read_legacy(token_credential: str, token_file: str) -> str | None:
    """The secret of the old single token file, or None when there is none (missing or
    empty: revoked). From ``$CREDENTIALS_DIRECTORY/<token_credential>`` when systemd
    hands it in, else the 0600 file itself. A token file others may read is refused."""
    try:
        st = os.lstat(token_file)
    except OSError:
        st = None
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    copy = os.path.join(cred_dir, token_credential) if cred_dir else ""
    try:
        copy_st = os.stat(copy) if copy else None
    except OSError:
        copy_st = None
    if st is None and copy_st is None:
        return None
    if st is not None and stat.S_ISREG(st.st_mode):
        check_mode(token_file, st.st_mode, 0o600, "gateway.token_file")
        if st.st_size == 0:
            return None
    source = token_file
    if copy_st is not None:
        source = copy
        if st is not None and st.st_mtime_ns > copy_st.st_mtime_ns:
            # Changed since systemd copied it at start: the copy is stale; read the file
            # itself if this process may (root), else the old secret must not stay valid.
            if not os.access(token_file, os.R_OK):
                raise CredentialError(token_file, "changed since the gateway started and "
                                      "systemd hands it in only at start: systemctl "
                                      "restart vx11-gateway.service",
                                      key="gateway.token_file")
            source = token_file
    raw = _read_file(source, 0o600 if source == token_file else 0o777, "gateway.token_file")
    token = raw.decode("utf-8", "replace").strip()
    if not token:
        return None
    if len(token) < MIN_SECRET:
        raise CredentialError(source, f"token is shorter than {MIN_SECRET} characters",
                              key="gateway.token_file")
    if not token.isascii() or any(c.isspace() for c in token):
        raise CredentialError(source, "token must be ASCII without spaces",
                              key="gateway.token_file")
    return token


def load_all(directory: str, token_credential: str, token_file: str
             ) -> tuple[list[Credential], list[CredentialError], str | None]:
    """The credential set: the files of ``directory`` and the legacy token as ``admin``
    (unless a file is named ``admin``); the errors; and the legacy secret (to redact)."""
    creds, errors = load_dir(directory)
    legacy = None
    if not any(c.name == LEGACY_NAME for c in creds):
        try:
            legacy = read_legacy(token_credential, token_file)
        except CredentialError as e:
            errors.append(e)
        if legacy is not None:
            creds.append(Credential(LEGACY_NAME, frozenset({"admin"}), digest(legacy), "",
                                    token_file))
    return creds, errors, legacy


def fingerprint(directory: str, token_file: str) -> tuple:
    """What changes when a credential is added, revoked or replaced: a few stat calls."""
    out: list[tuple] = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                out.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    try:
        st = os.stat(token_file)
        out.append(("", st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError:
        out.append(("", None))
    return tuple(out)


# --- what vx11ctl token add|list|revoke does -------------------------------------------

def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add(directory: str, name: str, scopes: frozenset[str], token_file: str,
        created: str | None = None) -> str:
    """Write the credential ``name`` and return its new secret (shown once, kept nowhere).

    Refused when the name exists (a file, or the legacy token for ``admin``). The file
    is written under a temporary name, fsynced, then linked into place, so the gateway
    never reads half a file and an existing name is never overwritten.
    """
    check_name(name)
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        raise InputError(f"credential {name} exists ({path}); revoke it first or choose "
                         "another name")
    if name == LEGACY_NAME and _legacy_present(token_file):
        raise InputError(f"credential {name} is the token file {token_file}; revoke it "
                         "first (vx11ctl token revoke admin) or choose another name")
    try:
        dst = os.stat(directory)
    except FileNotFoundError as e:
        raise InputError(f"{directory} does not exist; create it: install -d -m 0750 -g "
                         f"vx11 {directory}") from e
    secret = secrets.token_urlsafe(32)
    body = json.dumps({"created": created or now_iso(),
                       "digest": "sha256:" + digest(secret).hex(),
                       "scopes": sorted(scopes)}, sort_keys=True) + "\n"
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        try:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, dst.st_gid)
            os.fchmod(fd, 0o640)
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError as e:
            raise InputError(f"credential {name} exists ({path})") from e
    finally:
        os.unlink(tmp)
    _fsync_dir(directory)
    return secret


def _legacy_present(token_file: str) -> bool:
    try:
        return os.stat(token_file).st_size > 0
    except OSError:
        return False


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def revoke(directory: str, name: str, token_file: str) -> str:
    """Remove the credential ``name``; returns what was done (for the operator)."""
    check_name(name)
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        os.unlink(path)
        _fsync_dir(directory)
        return f"removed {path}"
    if name == LEGACY_NAME and _legacy_present(token_file):
        # Emptied, not removed: the gateway unit's LoadCredential= needs the file.
        fd = os.open(token_file, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return f"emptied {token_file} (the legacy token; the file stays for the unit)"
    raise InputError(f"no credential {name} in {directory}")


@dataclass(frozen=True)
class Listed:
    """A credential as ``vx11ctl token list`` shows it (never a digest)."""

    name: str
    scopes: list[str]
    created: str
    path: str
    mode: str
    error: str = ""


def listing(directory: str, token_credential: str, token_file: str) -> list[Listed]:
    """Every credential, and every refused file with its reason."""
    creds, errors = load_dir(directory)
    out = [Listed(c.name, sorted(c.scopes), c.created, c.path, _mode(c.path)) for c in creds]
    out += [Listed(os.path.basename(e.path), [], "", e.path, _mode(e.path), e.reason)
            for e in errors]
    if not any(c.name == LEGACY_NAME for c in creds) and _legacy_present(token_file):
        try:
            created = datetime.fromtimestamp(os.stat(token_file).st_mtime, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
        except OSError:
            created = ""
        out.append(Listed(LEGACY_NAME, ["admin"], created, token_file, _mode(token_file)))
    return sorted(out, key=lambda c: c.name)


def _mode(path: str) -> str:
    try:
        return f"{stat.S_IMODE(os.lstat(path).st_mode):04o}"
    except OSError:
        return "?"
