"""tzero serve: run one storage subsystem (nbdkit with the tzero plugin) in the foreground.

Everything the user gave is checked here first, so a mistake is one line, not
an nbdkit traceback. The pidfile appears only once both the NBD socket and the
control socket accept connections; SIGTERM or SIGINT stops nbdkit and removes
the sockets and the pidfile.
"""

import argparse
import os

from controller.cli.args import Subparsers
from controller.errors import UsageError
from controller.nbd.nbdkit_runner import PLUGIN_DIR, accepts_unix, listen_args, require_nbdkit, run_nbdkit, serves_nbd
from nbdplugin.config import ConfigError, PluginConfig
from nbdplugin.device import Device, DeviceError

PLUGIN = os.path.join(PLUGIN_DIR, "plugin.py")


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve block devices or image files as a storage subsystem")
    p.add_argument("--control", default="tzero.ctl", metavar="CTL", help="control socket (default ./tzero.ctl)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="SOCK", help="NBD unix socket (default ./tzero.sock)")
    where.add_argument("--port", type=int, metavar="PORT", help="NBD TCP port on loopback instead of a unix socket")
    p.add_argument("--pidfile", metavar="FILE", help="written once both sockets accept connections")
    p.add_argument("--side-memory", default="256M", metavar="SIZE",
                   help="side store memory before spilling (default 256M)")
    p.add_argument("--side-dir", metavar="DIR", help="where the side store spills (default: TMPDIR)")
    p.add_argument("--spill-keep", metavar="SIZE",
                   help="cut the spill file back to SIZE after each session (default: it keeps its largest size, "
                        "reserving that disk for the next backup)")
    p.add_argument("--chunk", default="64K", metavar="SIZE", help="concordance chunk size (default 64K)")
    p.add_argument("exports", nargs="+", metavar="NAME=PATH", help="a block device or image file to serve as NAME")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_nbdkit()
    config = _checked_config(args)
    control = config.control
    assert control is not None, "validate() refuses a config without one"
    nbd_socket = None if args.port else os.path.abspath(args.socket or "tzero.sock")
    cmd = nbdkit_command(config, nbd_socket, args.port)
    return run_nbdkit(cmd, lambda: accepts_unix(control) and serves_nbd(nbd_socket, args.port),
                      args.pidfile, [nbd_socket, control])


def _checked_config(args: argparse.Namespace) -> PluginConfig:
    config = PluginConfig()
    try:
        for spec in args.exports:
            config.set("export", spec)
        config.set("control", args.control)
        config.set("side-memory", args.side_memory)
        config.set("chunk", args.chunk)
        if args.side_dir:
            config.set("side-dir", args.side_dir)
        if args.spill_keep is not None:
            config.set("spill-keep", args.spill_keep)
        config.validate()
        for name, path in config.exports:
            Device(name, path).close()
    except (ConfigError, DeviceError) as e:
        raise UsageError(str(e)) from None
    return config


def nbdkit_command(config: PluginConfig, nbd_socket: str | None, port: int | None) -> list[str]:
    where = listen_args(nbd_socket, port)
    params = [f"export={n}={p}" for n, p in config.exports]
    params += [f"control={config.control}", f"side-memory={config.side_memory}", f"side-dir={config.side_dir}",
               f"chunk={config.chunk}", f"nbd-socket={nbd_socket}" if nbd_socket else f"nbd-port={port}"]
    if config.spill_keep is not None:
        params.append(f"spill-keep={config.spill_keep}")
    # One worker per connection: nbdkit 1.32 aborts (raw_send_socket: Assertion `sock >= 0')
    # when a client dies while several workers of its connection wait to send replies,
    # which is exactly a killed controller; and with the GIL, more workers per connection
    # only contend for it. Connections still run in parallel, so the plugin keeps its
    # PARALLEL thread model and its per-chunk locking.
    return ["nbdkit", "-f", "--exit-with-parent", "--threads", "1", *where, "python", PLUGIN, *params]
