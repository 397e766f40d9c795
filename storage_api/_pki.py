"""The deployment's TLS certificates, made with Debian's (or any) ``openssl`` command.

Backends and admin commands use this module; clients never do (they only read the CA
certificate). The CA's key is ``tls_ca_key`` when configured and otherwise an Ed25519 key derived
from the deployment secret: every holder of the secret (each backend, ``storage-api up``,
``storage_init.sh``) then makes the same CA on its own, with nothing to copy between hosts, and
replacing the secret replaces the CA. Two CA certificates made this way differ in their dates but
carry the same name and key, so a client trusting either accepts every backend's certificate.
Backends make a fresh certificate at each start, signed by the CA, with their id as common name.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from .errors import ConfigError

CA_NAME = "/CN=storage-api deployment CA"
DAYS = "3650"
# PKCS#8 wrapping of a raw 32-byte Ed25519 private key (RFC 8410).
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")
_BACKEND_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\nauthorityKeyIdentifier=keyid\n")


def derived_ca_key(secret: bytes) -> str:
    """The PEM of the deployment CA's private key, derived from the deployment secret."""
    seed = hmac.digest(secret, b"storage-api deployment CA key", "sha256")
    der = _ED25519_PKCS8 + seed
    return "-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der).decode() + "-----END PRIVATE KEY-----\n"


def _openssl(*args: str) -> None:
    # A system tool: also where the system keeps it when PATH has been narrowed.
    exe = shutil.which("openssl") or shutil.which("openssl", path="/usr/bin:/bin:/usr/local/bin")
    if exe is None:
        raise ConfigError("the openssl command is needed to make TLS certificates (apt install openssl), "
                          "or configure tls_cert and tls_key")
    proc = subprocess.run([exe, *args], capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def ca_key_file(directory: Path, secret: bytes, configured: str = "") -> Path:
    """The CA key to sign with: ``configured``, else the derived one written to ``directory``."""
    if configured:
        return Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ca.key"
    _write_private(path, derived_ca_key(secret))
    return path


def make_ca(directory: Path, key: Path) -> Path:
    """A self-signed CA certificate for ``key``, as ``directory/ca.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "ca.pem"
    # A fixed serial and name: a CA certificate made elsewhere from the same key must be interchangeable.
    _openssl("req", "-x509", "-key", str(key), "-out", str(out), "-days", DAYS, "-subj", CA_NAME, "-set_serial", "1",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    return out


def make_backend_cert(directory: Path, ca_cert: Path, ca_key: Path, backend_id: str) -> tuple[Path, Path]:
    """A new key and certificate for backend ``backend_id``, signed by the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert, csr = directory / "backend.key", directory / "backend.pem", directory / "backend.csr"
    _openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
    os.chmod(key, 0o600)
    # The request and the extensions file live beside the key, among the backend's own files, and
    # go when the certificate is made or its making fails: a process killed meanwhile leaves them
    # there (deleted with the backend's files), never in the system's temporary directory.
    ext = directory / "backend.cnf"
    try:
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={backend_id}", "-out", str(csr))
        ext.write_text(_BACKEND_EXT)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 "-set_serial", "0x" + secrets.token_hex(8), "-days", DAYS, "-extfile", str(ext), "-out", str(cert))
    finally:
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
    return cert, key
