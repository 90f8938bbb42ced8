"""Certificates for the TLS tests, made with the openssl command line: a CA, server
certificates for localhost/127.0.0.1/::1 (and more names), an expired one, a key that
matches nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

CA_CONF = """[ca]
default_ca = d
[d]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
copy_extensions = copy
unique_subject = no
[p]
commonName = supplied
"""


def _run(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)


class Pki:
    """A throwaway CA in ``d``; ``issue`` signs server certificates with it."""

    def __init__(self, d: Path):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.cnf").write_text(CA_CONF)
        (d / "index.txt").write_text("")
        (d / "serial").write_text("01\n")
        _run(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-subj", "/CN=vx11 test CA")
        self.ca = str(d / "ca.pem")

    def issue(self, name: str, *, start: str | None = None, end: str | None = None,
              days: int = 30, sans: tuple[str, ...] = ()) -> tuple[str, str]:
        """(cert, key) paths for a server certificate, key 0600."""
        alt = ",".join(["DNS:localhost", "IP:127.0.0.1", "IP:::1", *sans])
        _run(self.d, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
             "/CN=localhost", "-addext", f"subjectAltName={alt}")
        dates = (["-startdate", start, "-enddate", end] if start and end
                 else ["-days", str(days)])
        _run(self.d, "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile",
             "ca.key", "-in", f"{name}.csr", "-out", f"{name}.pem", "-notext", *dates)
        (self.d / f"{name}.key").chmod(0o600)
        return str(self.d / f"{name}.pem"), str(self.d / f"{name}.key")

    def stray_key(self, name: str) -> str:
        _run(self.d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", f"{name}.key")
        (self.d / f"{name}.key").chmod(0o600)
        return str(self.d / f"{name}.key")
