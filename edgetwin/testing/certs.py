"""Throw-away X.509 certificates for TLS tests, made with the `openssl` command.

`make_pki(directory)` writes a test CA, a server certificate for 127.0.0.1 and localhost
(subjectAltName, which hostname checking reads), client certificates for the names asked for,
and a second, unrelated CA to play the wrong one. Keys are P-256 EC keys: quick to generate,
accepted by mosquitto and by Python's ssl. Everything is valid for two days and lives in the
directory given (a pytest tmp_path, say), so no test depends on another's certificates.

`edgetwin.testing.broker.start_broker(tls=True)` calls it for you; call it yourself to share one
set of certificates between brokers, or to hand a client the wrong CA on purpose.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPENSSL_MISSING", "KeyPair", "OpensslError", "Pki", "make_pki", "openssl_binary"]

OPENSSL_MISSING = "the openssl command is not installed; it makes the test certificates"
"""Why TLS helpers cannot run here; a ready-made skip reason."""

# Our own request/extension sections: the system openssl.cnf adds extensions of its own to
# `req -x509`, which differ between distributions and may clash with ours.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class OpensslError(RuntimeError):
    """An openssl command failed; the message carries its stderr."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Everything `make_pki` wrote: the CA, the broker's certificate, clients' and a wrong CA."""

    ca: KeyPair
    """The test CA: clients trust `ca.cert`; the broker checks client certificates against it."""
    server: KeyPair
    """The broker's certificate, for 127.0.0.1 and localhost, signed by `ca`."""
    clients: dict[str, KeyPair]
    """Client certificates by common name (mosquitto's use_identity_as_username reads it)."""
    other_ca: KeyPair
    """A CA that signed none of the above: trusting it instead of `ca` must fail."""


def openssl_binary() -> str | None:
    """The openssl command's path, or None when it is not installed."""
    return shutil.which("openssl")


def _run(openssl: str, *args: str | Path) -> None:
    result = subprocess.run(  # noqa: S603 - the openssl binary, our own arguments, no shell
        [openssl, *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0:
        raise OpensslError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr}")


def _key(openssl: str, path: Path) -> Path:
    _run(
        openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path
    )
    return path


def _ca(openssl: str, directory: Path, name: str, cnf: Path) -> KeyPair:
    key = _key(openssl, directory / f"{name}.key")
    cert = directory / f"{name}.crt"
    _run(
        openssl, "req", "-config", cnf, "-x509", "-new", "-key", key, "-subj", f"/CN={name}",
        "-days", "2", "-extensions", "ca", "-out", cert,
    )  # fmt: skip
    return KeyPair(cert, key)


def _issue(
    openssl: str, directory: Path, ca: KeyPair, *, name: str, common_name: str, kind: str, cnf: Path
) -> KeyPair:
    key = _key(openssl, directory / f"{name}.key")
    request = directory / f"{name}.csr"
    cert = directory / f"{name}.crt"
    _run(
        openssl, "req", "-config", cnf, "-new", "-key", key, "-subj", f"/CN={common_name}",
        "-out", request,
    )  # fmt: skip
    _run(
        openssl, "x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key,
        "-set_serial", str(secrets.randbits(63)), "-days", "2",
        "-extfile", cnf, "-extensions", kind, "-out", cert,
    )  # fmt: skip
    return KeyPair(cert, key)


def make_pki(directory: Path, clients: tuple[str, ...] = ()) -> Pki:
    """Write a CA, a server certificate, one client certificate per name, and a wrong CA.

    Client certificates carry the name as their common name. Raises `OpensslError` when the
    openssl command is missing or fails. Takes about a tenth of a second per certificate.
    """
    openssl = openssl_binary()
    if openssl is None:
        raise OpensslError(OPENSSL_MISSING)
    directory.mkdir(parents=True, exist_ok=True)
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF)
    ca = _ca(openssl, directory, "edgetwin-test-ca", cnf)
    return Pki(
        ca=ca,
        server=_issue(
            openssl, directory, ca, name="server", common_name="127.0.0.1", kind="server", cnf=cnf
        ),
        clients={
            name: _issue(
                openssl,
                directory,
                ca,
                name=f"client-{name}",
                common_name=name,
                kind="client",
                cnf=cnf,
            )
            for name in clients
        },
        other_ca=_ca(openssl, directory, "edgetwin-wrong-ca", cnf),
    )
