"""A first run's TLS certificate for the edge: self-signed, made once, never replaced.

``ensure_certificate(cert, key)`` keeps a pair that is already there (the user's own, or
one made before) and otherwise makes a self-signed one with Debian's ``openssl`` (every
host that runs NGINX has it; no Python dependency is added for it). Half a pair is an
error: a certificate without its key, or the reverse, is never "repaired" by replacing
the half the user put there.

    >>> ensure_certificate(Path("tls/cert.pem"), Path("tls/key.pem"), names=["gpu-box"])
    'made'
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

__all__ = ["CertificateError", "ensure_certificate", "openssl_argv"]

# A first-run certificate: clients must be told to trust it (or be given the user's own).
VALID_DAYS = 825  # the longest lifetime Apple's TLS clients accept for a server certificate
_NAME = re.compile(r"^[A-Za-z0-9.*-]+$")


class CertificateError(ValueError):
    """Half a certificate pair, or ``openssl`` failed; the message says which."""


def openssl_argv(
    cert: Path, key: Path, names: Sequence[str], *, binary: str = "openssl", days: int = VALID_DAYS
) -> list[str]:
    """``openssl req`` for a self-signed EC P-256 certificate naming ``names`` (DNS names or
    IP addresses; the first is also the subject's CN), the key unencrypted."""
    if not names:
        raise ValueError("at least one name is needed")
    alt = []
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"certificate name {name!r}: expected a DNS name or an IP address")
        alt.append(f"{'IP' if _is_ip(name) else 'DNS'}:{name}")
    return [
        binary,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        str(days),
        "-subj",
        f"/CN={names[0]}",
        "-addext",
        f"subjectAltName={','.join(alt)}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]


def ensure_certificate(
    cert: Path,
    key: Path,
    *,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    binary: str = "openssl",
) -> Literal["kept", "made"]:
    """``kept`` when both files exist; ``made`` after writing a self-signed pair (the key
    mode 0600). Either one alone: :class:`CertificateError`, nothing written."""
    have = cert.exists(), key.exists()
    if all(have):
        return "kept"
    if any(have):
        present, missing = (cert, key) if have[0] else (key, cert)
        raise CertificateError(f"{present} exists but {missing} does not: give both, or neither")
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    part_cert, part_key = cert.with_name(cert.name + ".part"), key.with_name(key.name + ".part")
    argv = openssl_argv(part_cert, part_key, names, binary=binary)
    old_mask = os.umask(0o077)  # the key is never readable by others, not even briefly
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CertificateError(f"could not run {binary}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_mask)
    if done.returncode != 0:
        part_cert.unlink(missing_ok=True)
        part_key.unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CertificateError(f"{binary} req failed ({done.returncode}): {last}")
    part_key.replace(key)
    part_cert.chmod(0o644)
    part_cert.replace(cert)
    return "made"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
