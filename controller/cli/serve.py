"""tzero serve: run one storage subsystem (nbdkit with the tzero plugin) in the foreground.

Everything the user gave is checked here first, so a mistake is one line, not
an nbdkit traceback. The pidfile appears only once both the NBD socket and the
control socket accept connections; SIGTERM or SIGINT stops nbdkit and removes
the sockets and the pidfile.
"""

import argparse
import os
import shlex

from common.units import human_size
from controller.cli.args import Subparsers, command, exclusive_group, setting
from controller.errors import UsageError
from controller.nbd import activation
from controller.nbd.nbdkit_runner import PLUGIN_DIR, accepts_unix, listen_args, require_nbdkit, run_nbdkit, serves_nbd
from nbdplugin.config import ConfigError, PluginConfig
from nbdplugin.device import Device, DeviceError

PLUGIN = os.path.join(PLUGIN_DIR, "plugin.py")


DESCRIPTION = """\
Serve block devices or image files as NBD exports, one storage subsystem: nbdkit with
the tzero plugin, in the foreground until SIGTERM or SIGINT (run it under systemd, or
with & in a shell). Applications use the exports as 'nbd+unix:///NAME?socket=SOCK'
(or nbd://127.0.0.1:PORT/NAME); tzero backup drives backups through the control socket
CTL, which only its owner may use (mode 0600).

When both sockets accept connections it prints 'ready', the NBD URI of every export and
the control socket, writes --pidfile and tells systemd (READY=1, when $NOTIFY_SOCKET is
set). Chunks saved by copy-before-write wait in --side-memory, then in a spill file in
--side-dir: give it a disk with room for what applications may write during a backup
($TMPDIR or /tmp may be RAM)."""

EXAMPLES = (
    ("tzero serve --control /run/s1.ctl --socket /run/s1.sock vm1=/dev/vg/vm1 db=/srv/db.img",
     "serve a logical volume and an image file"),
    ("tzero serve --control /run/s1.ctl --port 10809 --side-dir /var/tmp vm1=/dev/vg/vm1",
     "NBD on loopback TCP port 10809, spilling to /var/tmp"),
    ("systemctl start tzero-serve@s1", "the same under systemd, settings in /etc/tzero/s1.conf (docs/service.md)"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "serve", summary="serve block devices or image files as a storage subsystem",
                description=DESCRIPTION, examples=EXAMPLES)
    setting(p, "--control", key="control", default="tzero.ctl", metavar="CTL",
            help="the control socket (relative paths are from the current folder)")
    where = exclusive_group(p)
    setting(where, "--socket", key="socket", default="tzero.sock", metavar="SOCK", help="NBD unix socket")
    where.add_argument("--port", type=int, metavar="PORT", help="NBD TCP port on loopback instead of a unix socket")
    p.add_argument("--pidfile", metavar="FILE", help="written once both sockets accept connections")
    setting(p, "--side-memory", key="side-memory", default="256M", metavar="SIZE",
            help="memory for chunks saved by copy-before-write before they spill")
    setting(p, "--side-dir", key="side-dir", default=None, metavar="DIR", also_env=("TZERO_SPILL_DIR",),
            shown_default="$TMPDIR, else /tmp", help="where the side store spills")
    setting(p, "--spill-keep", key="spill-keep", default=None, metavar="SIZE",
            shown_default="keep its largest size, reserving that disk for the next backup",
            help="cut the spill file back to SIZE after each session")
    setting(p, "--chunk", key="chunk", default="64K", metavar="SIZE",
            help="concordance chunk size, a power of two from 4K to 16M")
    setting(p, "exports", key="exports", default=None, is_list=True, metavar="NAME=PATH",
            help="a block device or image file to serve as export NAME")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.exports:
        raise UsageError("name at least one export: NAME=PATH (or $TZERO_EXPORTS, or exports in the config file)")
    require_nbdkit()
    activated = activation.take()
    given = args.setting_sources.get("socket") == "command line"
    if activated and (given or args.port):
        raise UsageError("--socket and --port do not go with socket activation: the NBD socket is systemd's")
    config = _checked_config(args, activated)
    control = config.control
    assert control is not None, "_checked_config sets it"
    env: dict[str, str] | None = None
    fds: tuple[int, ...] = ()
    leftovers: list[str | None]
    if activated:
        nbd_socket, port = activated.nbd_socket, activated.nbd_port
        cmd, env = activation.nbdkit_command(nbdkit_command(config, nbd_socket, port, args.verbose, listen=False),
                                             activated)
        fds = activation.passed_fds(activated)
        leftovers = [] if activated.control_fd is not None else [control]  # the activator's sockets stay
    else:
        nbd_socket = None if args.port else os.path.abspath(args.socket)
        port = args.port
        cmd = nbdkit_command(config, nbd_socket, port, args.verbose)
        leftovers = [nbd_socket, control]
    return run_nbdkit(cmd, lambda: accepts_unix(control) and serves_nbd(nbd_socket, port), args.pidfile,
                      leftovers, announce=announcement(config, nbd_socket, port), verbose=args.verbose, env=env,
                      pass_fds=fds)


def announcement(config: PluginConfig, nbd_socket: str | None, port: int | None) -> str:
    """What serve prints once ready: the control socket, then every export's NBD URI (quoted for
    a shell: a ? is a pattern there), its file and size."""
    lines = [f"tzero serve: ready; control socket {config.control}"]
    for name, path in config.exports:
        uri = f"nbd+unix:///{name}?socket={nbd_socket}" if nbd_socket else f"nbd://127.0.0.1:{port}/{name}"
        device = Device(name, path)
        size = device.size
        device.close()
        lines.append(f"  export {name}: {shlex.quote(uri)}  ({path}, {human_size(size)})")
    return "\n".join(lines)


def _checked_config(args: argparse.Namespace, activated: activation.Activation | None) -> PluginConfig:
    config = PluginConfig()
    try:
        for spec in args.exports:
            config.set("export", spec)
        if activated and activated.control_path:
            config.control = activated.control_path
            config.control_fd = activated.control_fd
        else:
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


def nbdkit_command(config: PluginConfig, nbd_socket: str | None, port: int | None, verbose: bool = False,
                   listen: bool = True) -> list[str]:
    """nbdkit's command line: listening on NBD_SOCKET or PORT itself when LISTEN (not when its
    sockets come from socket activation); -v for VERBOSE."""
    where = listen_args(nbd_socket, port) if listen else []
    params = [f"export={n}={p}" for n, p in config.exports]
    control = f"control-fd={config.control_fd}" if config.control_fd is not None else f"control={config.control}"
    params += [control, f"side-memory={config.side_memory}", f"side-dir={config.side_dir}",
               f"chunk={config.chunk}", f"nbd-socket={nbd_socket}" if nbd_socket else f"nbd-port={port}"]
    if config.spill_keep is not None:
        params.append(f"spill-keep={config.spill_keep}")
    # One worker per connection: nbdkit 1.32 aborts (raw_send_socket: Assertion `sock >= 0')
    # when a client dies while several workers of its connection wait to send replies,
    # which is exactly a killed controller; and with the GIL, more workers per connection
    # only contend for it. Connections still run in parallel, so the plugin keeps its
    # PARALLEL thread model and its per-chunk locking.
    return ["nbdkit", "-f", "--exit-with-parent", "--threads", "1", *(["-v"] if verbose else []), *where,
            "python", PLUGIN, *params]
