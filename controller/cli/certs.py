"""tzero certs: make the certificate directory that TLS needs (controller/net/certs.py)."""

import argparse

from controller.cli.args import Subparsers
from controller.errors import UsageError, os_error
from controller.net.certs import CA_KEY, LEAF_DAYS, CertError, make_directory


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "certs", help="make a CA, a server and a client certificate for TLS",
        description="Make DIR/ca-cert.pem (and ca-key.pem, unless --ca names an existing CA), "
                    "server-cert.pem and server-key.pem naming every --host, and client-cert.pem and "
                    "client-key.pem: the layout nbdkit, libnbd, QEMU and tzero all read. Keys are "
                    "ECDSA P-256, written mode 0600; the CA is valid 10 years, the others --days. "
                    f"Keep {CA_KEY} with whoever issues certificates: hosts need only the other files.")
    p.add_argument("directory", metavar="DIR", help="where the files go (made 0700 if missing)")
    p.add_argument("--host", dest="hosts", action="append", default=[], metavar="NAME_OR_IP",
                   help="a name or address clients use to reach the server (repeat); without it, no "
                        "server certificate is made")
    p.add_argument("--ca", metavar="CADIR", help=f"issue with the CA in CADIR (ca-cert.pem and {CA_KEY}) "
                                                  "instead of making a new one")
    p.add_argument("--no-client", action="store_true", help="make no client certificate")
    p.add_argument("--days", type=int, default=LEAF_DAYS, metavar="N",
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
