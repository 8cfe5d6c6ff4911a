"""`synergos-provision DIR --ttp NAME --director NAME --worker NAME ... --user NAME ...`

Creates the collaboration CA in `DIR/ca/` (keep it with whoever provisions; no service needs
its key) and one folder of credentials per name, `DIR/NAME/{ca,cert,key}.pem`, to copy to the
machine that runs that service or user. Running it again on the same DIR adds the new names and
keeps the existing ones.
"""

from __future__ import annotations

import argparse
import sys

from .identity import CredentialsError, Role, provision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synergos-provision",
        description="Issue a collaboration's identities: a CA and, per name, ca.pem, cert.pem and key.pem",
    )
    parser.add_argument("dir", help="where to write the CA (DIR/ca) and each identity (DIR/NAME)")
    for flag, what in (
        ("--ttp", "TTP identities"),
        ("--director", "Director identities"),
        ("--worker", "Worker identities, one per party's node"),
        ("--user", "orchestrator users (they run the Driver script)"),
        ("--participant", "participant users: each may act only for the participant id it is named"),
    ):
        parser.add_argument(flag, nargs="+", action="extend", default=[], metavar="NAME", help=what)
    parser.add_argument("--collaboration", help="the collaboration id written into every certificate")
    parser.add_argument(
        "--hosts",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=HOST[,HOST]",
        help="addresses recorded in a service's certificate (informational; peers are identified by role)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    identities = {
        Role.TTP: args.ttp,
        Role.DIRECTOR: args.director,
        Role.WORKER: args.worker,
        Role.ORCHESTRATOR: args.user,
        Role.PARTICIPANT: args.participant,
    }
    if not any(identities.values()):
        parser.error("name at least one identity: --ttp, --director, --worker, --user or --participant")
    hosts: dict[str, list[str]] = {}
    for item in args.hosts:
        name, sep, addresses = item.partition("=")
        if not sep or not addresses:
            parser.error(f"--hosts takes NAME=HOST[,HOST] (got {item!r})")
        hosts.setdefault(name, []).extend(a for a in addresses.split(",") if a)
    try:
        written = provision(args.dir, identities, collaboration=args.collaboration, hosts=hosts)
    except CredentialsError as exc:
        print(f"synergos-provision: {exc}", file=sys.stderr)
        return 2
    for role, names in identities.items():
        for name in names:
            print(f"{role.value:<12} {name:<24} {written[name]}")
    print(f"CA: {args.dir}/ca (its key signs new identities; it never leaves the provisioning machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
