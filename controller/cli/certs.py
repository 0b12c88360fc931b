"""tzero certs: make the certificate directory that TLS needs (controller/net/certs.py)."""

import argparse

from controller.cli.args import Subparsers, command, integer
from controller.errors import UsageError, os_error
from controller.net.certs import CA_KEY, LEAF_DAYS, CertError, make_directory

DESCRIPTION = f"""\
Make the certificates that TLS between tzero's hosts needs, in the layout nbdkit, libnbd,
QEMU and tzero all read: DIR/ca-cert.pem (and {CA_KEY}, unless --ca names an existing CA),
server-cert.pem and server-key.pem naming every --host (a name or an address clients dial),
and client-cert.pem and client-key.pem. Keys are ECDSA P-256, written mode 0600 in a
directory made 0700; the CA is valid 10 years, the others --days (default {LEAF_DAYS}).
Existing files are replaced only with --force.

Keep {CA_KEY} where certificates are issued: a subsystem's host needs ca-cert.pem and its
server certificate and key; the controller's host and applications need ca-cert.pem and a
client certificate and key. One directory holding all five works for both sides."""

EXAMPLES = (
    ("tzero certs /etc/tzero/pki", "a new CA and a client certificate"),
    ("tzero certs /tmp/s1 --ca /etc/tzero/pki --host s1.example --host 10.0.0.1 --no-client",
     "a server certificate for host s1, from that CA, to copy to s1"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "certs", summary="make a CA, a server and a client certificate for TLS",
                description=DESCRIPTION, examples=EXAMPLES)
    p.add_argument("directory", metavar="DIR", help="where the files go (made 0700 if missing)")
    p.add_argument("--host", dest="hosts", action="append", default=[], metavar="NAME_OR_IP",
                   help="a name or address clients use to reach the server (repeat); without it, no "
                        "server certificate is made")
    p.add_argument("--ca", metavar="CADIR", help=f"issue with the CA in CADIR (ca-cert.pem and {CA_KEY}) "
                                                  "instead of making a new one")
    p.add_argument("--no-client", action="store_true", help="make no client certificate")
    p.add_argument("--days", type=integer, default=LEAF_DAYS, metavar="N",
                   help=f"validity of the server and client certificates (default {LEAF_DAYS})")
    p.add_argument("--force", action="store_true", help="replace files that exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        expiry = make_directory(args.directory, args.hosts, not args.no_client, args.ca, args.days, args.force)
    except CertError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise os_error(e, f"writing certificates into {args.directory}") from None
    for name, when in expiry.items():
        print(f"{args.directory}/{name}: valid until {when:%Y-%m-%d}")
    return 0
