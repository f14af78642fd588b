"""Throw-away PKI for the lab: two trusted CAs (trustme) and leaf certificates as PEM files.
Keys are unencrypted and short-lived by design; never use these files outside the lab. Every
file is written as a new one renamed into place (write_file), never through a planted link."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

LAB_ORG = "dualstack-lab"
CA1_NAME = "dualstack-lab CA"
CA2_NAME = "dualstack-lab CA 2"
# A fixed OU for leaves: trustme would pick a random one, and then a "rotated" certificate
# would differ in subject as well as key, which is not what a plain key rotation looks like.
LEAF_OU = "dualstack-lab leaf"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCert:
    """A leaf certificate on disk plus the facts tests and probes compare between families."""

    label: str
    cert_file: Path  # leaf PEM (trustme CAs are roots, so the chain is the leaf alone)
    key_file: Path  # unencrypted private key PEM
    issuer: str  # CA name (CA1_NAME or CA2_NAME)
    sans: tuple[str, ...]
    not_after: dt.datetime  # timezone-aware UTC
    sha256: str  # certificate fingerprint, hex
    spki_sha256: str  # public-key fingerprint, hex: differs after a rotation

    @property
    def expired(self) -> bool:
        return self.not_after <= dt.datetime.now(dt.UTC)


def _safe_label(label: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
        raise ValueError(f"label must be a plain file-name stem: {label!r}")
    return label


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `path` as a new file, never through what is there: a fresh file of its own
    (O_EXCL, O_NOFOLLOW, created with `mode`) renamed over the name, so a symlink planted at
    the name is replaced, not followed, and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_private(path: Path, data: bytes) -> None:
    write_file(path, data, 0o600)


class LabPki:
    """Two CAs written to `workdir` at construction; `issue` and `rotate` add leaves there.

    `ca_file` (ca_bundle.pem) holds both CA certificates, so a CA 2 leaf verifies but shows a
    different issuer than the CA 1 leaves.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._cas: dict[str, trustme.CA] = {
            CA1_NAME: trustme.CA(organization_name=LAB_ORG, organization_unit_name=CA1_NAME),
            CA2_NAME: trustme.CA(organization_name=LAB_ORG, organization_unit_name=CA2_NAME),
        }
        self.ca1_file = workdir / "ca.pem"
        self.ca2_file = workdir / "ca2.pem"
        self.ca_file = workdir / "ca_bundle.pem"
        write_file(self.ca1_file, self._cas[CA1_NAME].cert_pem.bytes())
        write_file(self.ca2_file, self._cas[CA2_NAME].cert_pem.bytes())
        write_file(
            self.ca_file,
            self._cas[CA1_NAME].cert_pem.bytes() + self._cas[CA2_NAME].cert_pem.bytes(),
        )
        self.certs: dict[str, IssuedCert] = {}

    def issue(
        self,
        label: str,
        sans: Sequence[str],
        *,
        expired: bool = False,
        second_ca: bool = False,
    ) -> IssuedCert:
        """Issue a leaf for `sans` (first SAN is also the CN) and write `<label>.pem`/`.key`.

        expired: notAfter one day in the past; second_ca: signed by "dualstack-lab CA 2".
        """
        issuer = CA2_NAME if second_ca else CA1_NAME
        not_after = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) if expired else None
        return self._issue(label, tuple(sans), issuer, not_after)

    def rotate(self, original: IssuedCert, label: str) -> IssuedCert:
        """A new leaf with the same issuer, names and expiry but a fresh key (a key rotation)."""
        expiry = original.not_after if original.expired else None
        return self._issue(label, original.sans, original.issuer, expiry)

    def _issue(
        self,
        label: str,
        sans: tuple[str, ...],
        issuer: str,
        not_after: dt.datetime | None,
    ) -> IssuedCert:
        label = _safe_label(label)
        if label in self.certs:
            raise ValueError(f"certificate label already used: {label}")
        if not sans:
            raise ValueError("a leaf needs at least one SAN")
        leaf = self._cas[issuer].issue_cert(
            *sans,
            common_name=sans[0],
            organization_name=LAB_ORG,
            organization_unit_name=LEAF_OU,
            # trustme takes naive datetimes and treats them as UTC.
            not_after=None if not_after is None else not_after.replace(tzinfo=None),
        )
        cert_file = self.workdir / f"{label}.pem"
        key_file = self.workdir / f"{label}.key"
        write_file(cert_file, leaf.cert_chain_pems[0].bytes())
        _write_private(key_file, leaf.private_key_pem.bytes())
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(spki)
        issued = IssuedCert(
            label=label,
            cert_file=cert_file,
            key_file=key_file,
            issuer=issuer,
            sans=sans,
            not_after=cert.not_valid_after_utc,
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
            spki_sha256=digest.finalize().hex(),
        )
        self.certs[label] = issued
        return issued
