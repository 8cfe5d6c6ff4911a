"""Identities for one collaboration: a CA, a certificate per service and user, and TLS contexts.

`provision(DIR, ...)` writes, in the spirit of NVFlare's startup kits, a collaboration CA in
`DIR/ca/` (its key stays there, with whoever provisions) and for each name a folder
`DIR/NAME/` holding `ca.pem`, `cert.pem` and `key.pem`. The certificate's subject names the
identity (`CN`), its role (`OU`: ttp, director, worker, orchestrator or participant) and, when
given, the collaboration it was issued for (`O`). Services carry server and client
authentication in their extended key usage; users only client authentication, so a user's
certificate can never pass for a service.

Every channel is standard TLS (the standard library's `ssl`): the chain must lead to the
collaboration CA, and the role read from the verified certificate decides what its holder may
do. Host names are not checked, since parties reach each other by addresses that change; the
CA and the role are what identify a peer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FOLDER = "ca"
CA_FILE, CERT_FILE, KEY_FILE, CA_KEY_FILE = "ca.pem", "cert.pem", "key.pem", "ca-key.pem"
CREDENTIALS_ENV = "SYNERGOS_CREDENTIALS"
VALIDITY_DAYS = 825


class Role(StrEnum):
    TTP = "ttp"
    DIRECTOR = "director"
    WORKER = "worker"
    ORCHESTRATOR = "orchestrator"  # a user who runs the collaboration (the deployment guide's Driver script)
    PARTICIPANT = "participant"  # a user acting for one party only: its participant record, tags, results


SERVICE_ROLES = frozenset({Role.TTP, Role.DIRECTOR, Role.WORKER})
# who may manage every record and phase on a TTP or a Director
ORCHESTRATING_ROLES = frozenset({Role.TTP, Role.DIRECTOR, Role.ORCHESTRATOR})


class CredentialsError(Exception):
    """Credentials missing, unreadable or not issued as Synergos identities."""


@dataclass(frozen=True)
class Identity:
    """Who is at the other end of a verified TLS channel."""

    name: str
    role: Role
    collaboration: str | None = None

    def __str__(self) -> str:
        return f"{self.role.value} {self.name}"


def identity_of(subject: Mapping[str, str]) -> Identity | None:
    """The identity a verified certificate's subject names, or None if it names no Synergos role."""
    name, role = subject.get("commonName"), subject.get("organizationalUnitName")
    if not name or role not in set(Role):
        return None
    return Identity(name, Role(role), subject.get("organizationName") or None)


def peer_identity(peercert: Mapping[str, Any] | None) -> Identity | None:
    """The identity in `ssl.SSLSocket.getpeercert()`'s parsed form (present only once verified)."""
    if not peercert:
        return None
    subject: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            subject[key] = value
    return identity_of(subject)


def _subject_of(cert: x509.Certificate) -> dict[str, str]:
    names = {
        NameOID.COMMON_NAME: "commonName",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName",
        NameOID.ORGANIZATION_NAME: "organizationName",
    }
    out = {}
    for attr in cert.subject:
        if attr.oid in names:
            out[names[attr.oid]] = str(attr.value)
    return out


@dataclass(frozen=True)
class Credentials:
    """One identity's folder from `synergos-provision`: the CA to trust, its certificate and key."""

    folder: Path
    identity: Identity

    @property
    def ca(self) -> Path:
        return self.folder / CA_FILE

    @property
    def cert(self) -> Path:
        return self.folder / CERT_FILE

    @property
    def key(self) -> Path:
        return self.folder / KEY_FILE

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Credentials:
        path = Path(folder).expanduser()
        missing = [f for f in (CA_FILE, CERT_FILE, KEY_FILE) if not (path / f).is_file()]
        if missing:
            raise CredentialsError(
                f"credentials folder {path} lacks {', '.join(missing)}: create it with "
                "`synergos-provision DIR --ttp NAME --worker NAME ... --user NAME` and pass DIR/NAME"
            )
        try:
            cert = x509.load_pem_x509_certificate((path / CERT_FILE).read_bytes())
            ca = x509.load_pem_x509_certificate((path / CA_FILE).read_bytes())
        except ValueError as exc:
            raise CredentialsError(f"{path}: not a PEM certificate ({exc})") from None
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception) as exc:  # noqa: BLE001 - cryptography raises several kinds
            raise CredentialsError(f"{path}/{CERT_FILE} was not issued by {path}/{CA_FILE} ({exc})") from None
        identity = identity_of(_subject_of(cert))
        if identity is None:
            raise CredentialsError(f"{path}/{CERT_FILE} names no Synergos identity (CN and a role in OU)")
        return cls(path, identity)

    # -- TLS contexts --
    def server_context(self, *, require_client: bool) -> ssl.SSLContext:
        """A server context presenting this identity; client certificates are verified against the
        CA (required, or optional so that `/health` answers a client without one)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        return ctx

    def client_context_without_identity(self) -> ssl.SSLContext:
        """Trusting only the collaboration CA but presenting no certificate (an anonymous client)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # peers are identified by the CA and the role, not by address
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context presenting this identity and trusting only the collaboration CA."""
        ctx = self.client_context_without_identity()
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def default_folder(role: str) -> Path | None:
    """Inside an image, `/<role>/credentials`; None elsewhere."""
    folder = Path("/") / role / "credentials"
    return folder if folder.is_dir() else None


def resolve(folder: str | os.PathLike[str] | None, role: str | None = None) -> Credentials | None:
    """Credentials from `folder`, else `SYNERGOS_CREDENTIALS`, else the image default for `role`."""
    chosen = folder or os.environ.get(CREDENTIALS_ENV) or (default_folder(role) if role else None)
    return Credentials.load(chosen) if chosen else None


# ---- provisioning ----


def _name(common: str, role: str | None, collaboration: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if role:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    if collaboration:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, collaboration))
    return x509.Name(attrs)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only (ECDHE does the key exchange); the CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _load_or_create_ca(root: Path, collaboration: str | None, now: dt.datetime) -> tuple[x509.Certificate, Any]:
    folder = root / CA_FOLDER
    if (folder / CA_FILE).is_file() and (folder / CA_KEY_FILE).is_file():
        cert = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY_FILE).read_bytes(), password=None)
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"Synergos CA {collaboration or 'collaboration'}", None, collaboration)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS * 2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(folder / CA_KEY_FILE, key)
    (folder / CA_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: Any,
    name: str,
    role: Role,
    collaboration: str | None,
    hosts: Iterable[str],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role in SERVICE_ROLES:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    alt: list[x509.GeneralName] = []
    for host in dict.fromkeys([name, *hosts]):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, role.value, collaboration))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def provision(
    root: str | os.PathLike[str],
    identities: Mapping[Role, Iterable[str]],
    *,
    collaboration: str | None = None,
    hosts: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, Path]:
    """Create (or extend) a collaboration's CA in `root/ca/` and one folder per name; returns the
    folders written. An existing name keeps its credentials, so provisioning again adds parties."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_cert, ca_key = _load_or_create_ca(base, collaboration, now)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    written: dict[str, Path] = {}
    seen: dict[str, Role] = {}
    for role, names in identities.items():
        for name in names:
            if name == CA_FOLDER or not name or "/" in name or name.startswith("."):
                raise CredentialsError(f"{name!r} cannot name an identity (the folder {CA_FOLDER!r} is the CA's)")
            if name in seen and seen[name] is not role:
                raise CredentialsError(f"{name!r} is given twice, as {seen[name].value} and {role.value}")
            seen[name] = role
            folder = base / name
            if (folder / CERT_FILE).is_file():
                existing = Credentials.load(folder)
                if existing.identity.role is not role:
                    raise CredentialsError(
                        f"{folder} already holds a {existing.identity.role.value}'s credentials, not a {role.value}'s"
                    )
                written[name] = folder
                continue
            folder.mkdir(parents=True, exist_ok=True)
            cert, key = _issue(ca_cert, ca_key, name, role, collaboration, (hosts or {}).get(name, ()), now)
            _write_key(folder / KEY_FILE, key)
            (folder / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (folder / CA_FILE).write_bytes(ca_pem)
            written[name] = folder
    return written
