"""The Driver's side of TLS: the user's certificate from a `synergos-provision` folder.

The folder (`credentials=` or `SYNERGOS_CREDENTIALS`) holds `ca.pem` (the collaboration CA, the
only one trusted), `cert.pem` and `key.pem`. Host names are not checked: the TTP or Director is
identified by the collaboration CA that issued its certificate."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from ._exceptions import SynergosError

CREDENTIALS_ENV = "SYNERGOS_CREDENTIALS"
FILES = ("ca.pem", "cert.pem", "key.pem")


def credentials_folder(given: str | os.PathLike[str] | None) -> Path | None:
    chosen = given if given is not None else os.environ.get(CREDENTIALS_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else None


def client_context(folder: Path) -> ssl.SSLContext:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise SynergosError(
            f"credentials folder {folder} lacks {', '.join(missing)}: use a user's folder from "
            "synergos-provision (DIR/NAME)",
            code="credentials.invalid",
            title="Invalid credentials",
        )
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    except (ssl.SSLError, OSError) as exc:
        raise SynergosError(
            f"credentials in {folder} cannot be loaded: {exc}", code="credentials.invalid", title="Invalid credentials"
        ) from None
    return ctx
