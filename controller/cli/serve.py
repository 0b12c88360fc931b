"""tzero serve: run one storage subsystem (nbdkit with the tzero plugin) in the foreground.

Everything the user gave is checked here first, so a mistake is one line, not
an nbdkit traceback: the exports (each device opened and locked as the plugin will,
then let go), the sizes, --side-dir (a spill file is made there), the sockets (their
directories, and no other server on them), the port, the pidfile. The pidfile appears
only once both the NBD socket and the control socket accept connections; SIGTERM,
SIGINT or SIGHUP stops nbdkit and removes the sockets and the pidfile this run made.

On a network: the control channel at --control HOST:PORT and NBD at --bind/--port, both
with TLS and client certificates from --tls-certificates DIR (controller/net/listen.py
says what is refused without it).
"""

import argparse
import os
import shlex
import socket

from common.endpoint import bracketed
from common.units import human_size
from controller import service
from controller.cli.args import Subparsers, command, exclusive_group, integer, setting
from controller.errors import UsageError
from controller.nbd import activation
from controller.nbd.nbdkit_runner import (
    PLUGIN_DIR,
    accepts_unix,
    check_pidfile,
    check_port,
    claim_socket,
    listen_args,
    require_nbdkit,
    run_nbdkit,
    serves_nbd,
)
from controller.net.listen import NbdListen, accepts_tcp, check_tcp_free, checked_certificates
from nbdplugin.changestate import StateDir, StateError
from nbdplugin.config import ConfigError, PluginConfig
from nbdplugin.device import Device, DeviceError

PLUGIN = os.path.join(PLUGIN_DIR, "plugin.py")


DESCRIPTION = """\
Serve block devices or image files as NBD exports, one storage subsystem: nbdkit with
the tzero plugin, in the foreground until SIGTERM or SIGINT (run it under systemd, or
with & in a shell). Applications use the exports as 'nbd+unix:///NAME?socket=SOCK'
(or nbds://HOST:PORT/NAME with --port); tzero backup drives backups through the control
socket CTL, which only its owner may use (mode 0600).

On a network, --control HOST:PORT and --port serve the control channel and NBD over TCP,
both with mutual TLS from --tls-certificates DIR (tzero certs makes it): clients need a
certificate signed by DIR's CA. TCP without TLS is refused off loopback, and on loopback
unless --insecure-plaintext-tcp.

When both sockets accept connections it prints 'ready', the NBD URI of every export and
the control socket, writes --pidfile and tells systemd (READY=1, when $NOTIFY_SOCKET is
set). Chunks saved by copy-before-write wait in --side-memory, then in a spill file in
--side-dir: give it a disk with room for what applications may write during a backup
($TMPDIR or /tmp may be RAM).

Every export's changes are tracked for incremental backups (tzero backup --since); the
change maps survive a clean stop (SIGTERM) in --state-dir, and are never trusted after an
unclean one (nbdkit killed, a crash, power lost) or when an image file was written while
it was not served. Without a usable default state directory they live in memory only, and
serve says so."""

EXAMPLES = (
    ("tzero serve --control /run/s1.ctl --socket /run/s1.sock vm1=/dev/vg/vm1 db=/srv/db.img",
     "serve a logical volume and an image file"),
    ("tzero serve --control s1.example:7000 --port 10809 --tls-certificates /etc/tzero/pki vm1=/dev/vg/vm1",
     "control channel and NBD on the network, both with mutual TLS"),
    ("tzero serve --control /run/s1.ctl --port 10809 --insecure-plaintext-tcp --side-dir /var/tmp vm1=/dev/vg/vm1",
     "NBD on loopback TCP port 10809 without TLS, spilling to /var/tmp"),
    ("systemctl start tzero-serve@s1", "the same under systemd, settings in /etc/tzero/s1.conf (docs/service.md)"),
)


def register(subparsers: Subparsers) -> None:
    p = command(subparsers, "serve", summary="serve block devices or image files as a storage subsystem",
                description=DESCRIPTION, examples=EXAMPLES)
    setting(p, "--control", key="control", default="tzero.ctl", metavar="CTL",
            help="the control socket: a unix socket path (relative paths are from the current folder), "
                 "HOST:PORT or [IPV6]:PORT")
    where = exclusive_group(p)
    setting(where, "--socket", key="socket", default="tzero.sock", metavar="SOCK", help="NBD unix socket")
    where.add_argument("--port", type=integer, metavar="PORT", help="NBD on this TCP port instead of a unix socket")
    setting(p, "--bind", key="bind", default=None, metavar="ADDR", shown_default="the --control host, else 127.0.0.1",
            help="the address NBD listens on with --port")
    setting(p, "--tls-certificates", key="tls-certificates", default=None, metavar="DIR",
            help="TLS for the control channel and NBD over TCP: DIR holds ca-cert.pem, server-cert.pem, "
                 "server-key.pem; clients need a certificate signed by that CA (see tzero certs)")
    p.add_argument("--insecure-plaintext-tcp", action="store_true",
                   help="allow TCP without TLS on loopback, where any local user can then read and write the disks")
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
    setting(p, "--state-dir", key="state-dir", default=None, metavar="DIR", also_env=("STATE_DIRECTORY",),
            shown_default="/var/lib/tzero for root, else $XDG_STATE_HOME/tzero",
            help="where the change maps survive a clean restart")
    p.add_argument("--no-tracking", action="store_true",
                   help="track no changes: no incremental backups (tzero backup --since) from this subsystem")
    setting(p, "exports", key="exports", default=None, is_list=True, metavar="NAME=PATH",
            help="a block device or image file to serve as export NAME")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.exports:
        raise UsageError("name at least one export: NAME=PATH (or $TZERO_EXPORTS, or exports in the config file)")
    require_nbdkit()
    if args.port is not None:
        check_port(args.port)
    activated = activation.take()
    given = args.setting_sources.get("socket") == "command line"
    if activated and (given or args.port is not None):
        raise UsageError("--socket and --port do not go with socket activation: the NBD socket is systemd's")
    config = _checked_config(args, activated)
    control = config.control
    assert control is not None, "_checked_config sets it"
    if control.path is not None and config.control_fd is None:
        claim_socket(control.path, "--control")
    check_pidfile(args.pidfile)
    nbd = _nbd_listen(args, config, activated)
    _check_network(config, nbd, activated is None)
    env: dict[str, str] | None = None
    fds: tuple[int, ...] = ()
    leftovers: list[str | None]
    if activated:
        cmd, env = activation.nbdkit_command(nbdkit_command(config, nbd, args.verbose, listen=False), activated)
        fds = activation.passed_fds(activated)
        leftovers = [] if activated.control_fd is not None else [control.path]  # the activator's sockets stay
    else:
        cmd = nbdkit_command(config, nbd, args.verbose)
        leftovers = [nbd.socket, control.path]

    def ready() -> bool:
        if control.path is not None:
            up = accepts_unix(control.path)
        else:
            assert control.host is not None, "an endpoint has a path or a host"
            up = accepts_tcp(NbdListen(host=control.host).dial_host, control.port)
        return up and serves_nbd(nbd)

    return run_nbdkit(cmd, ready, args.pidfile, leftovers, announce=announcement(config, nbd), verbose=args.verbose,
                      env=env, pass_fds=fds)


def _nbd_listen(args: argparse.Namespace, config: PluginConfig, activated: activation.Activation | None) -> NbdListen:
    """Where NBD listens: the activated socket, a unix socket, or TCP at the host the plugin was told."""
    control = config.control
    assert control is not None, "_checked_config sets it"
    if activated:
        if activated.nbd_socket is not None:
            return NbdListen(socket=activated.nbd_socket)
        return NbdListen(host=config.nbd_host, port=activated.nbd_port, tls_dir=config.tls_certificates)
    if args.port is None:
        if args.bind:
            raise UsageError("--bind is for NBD over TCP: give --port too")
        if control.is_tcp:
            raise UsageError(f"--control {control} is on the network, so NBD must be too: give --port "
                             "(a controller on another host reads the time-zero views over NBD)")
        return NbdListen(socket=os.path.abspath(args.socket))
    return NbdListen(host=config.nbd_host, port=args.port, tls_dir=config.tls_certificates)


def _check_network(config: PluginConfig, nbd: NbdListen, binding: bool) -> None:
    """What nbdkit would fail on later with a traceback: certificates that do not load, ports
    taken (BINDING: the sockets are ours to make). config.validate() applied the transport rules."""
    assert config.control is not None, "_checked_config sets it"
    if config.tls_certificates is not None:
        checked_certificates(config.tls_certificates)
    if not binding:
        return
    if config.control.host is not None:
        check_tcp_free(config.control.host, config.control.port, "the control channel")
        if nbd.port == config.control.port:
            raise UsageError(f"--port {nbd.port} is the --control port: NBD and the control channel need one each")
    if nbd.port is not None:
        check_tcp_free(nbd.host, nbd.port, "NBD")


def announcement(config: PluginConfig, nbd: NbdListen) -> str:
    """What serve prints once ready: the control channel, then every export's NBD URI (quoted for
    a shell: a ? is a pattern there), its file and size. A TLS URI wants the client's own
    certificates: ?tls-certificates=DIR, with the client's DIR."""
    control = config.control
    tls = " (TLS)" if control is not None and control.is_tcp and config.tls_certificates else ""
    lines = [f"tzero serve: ready; control socket {control}{tls}"]
    for name, path in config.exports:
        if nbd.socket is not None:
            uri = f"nbd+unix:///{name}?socket={nbd.socket}"
        else:
            scheme = "nbds" if nbd.tls_dir else "nbd"
            uri = f"{scheme}://{bracketed(nbd.dial_host)}:{nbd.port}/{name}"
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
            config.set("control", activated.control_path)
            config.control_fd = activated.control_fd
        else:
            config.set("control", args.control)
        if args.tls_certificates:
            config.set("tls-certificates", args.tls_certificates)
        config.set("insecure-plaintext-tcp", "yes" if args.insecure_plaintext_tcp else "no")
        port = activated.nbd_port if activated else args.port
        if port is not None:
            if not 0 < port < 65536:
                raise ConfigError(f"--port {port}: not a TCP port")
            config.set("nbd-port", str(port))
            assert config.control is not None, "set just above"
            config.set("nbd-host", _activated_host() if activated else
                       args.bind or config.control.host or "127.0.0.1")
        config.set("side-memory", args.side_memory)
        config.set("chunk", args.chunk)
        if args.side_dir:
            config.set("side-dir", args.side_dir)
        if args.spill_keep is not None:
            config.set("spill-keep", args.spill_keep)
        _state_dir(args, config)
        for name, path in config.exports:
            Device(name, path).close()
        if config.state_dir and config.tracking:
            StateDir.probe(config.state_dir, config.exports)
    except (ConfigError, DeviceError, StateError) as e:
        raise UsageError(str(e)) from None
    return config


def _state_dir(args: argparse.Namespace, config: PluginConfig) -> None:
    """Change tracking's settings, validated with the rest. A state directory the user named must
    be usable; the default (and $STATE_DIRECTORY, which systemd makes for a service with
    StateDirectory=) is a convenience: without it tracking still works, until a restart."""
    if args.no_tracking:
        config.set("tracking", "off")
    source = getattr(args, "setting_sources", {}).get("state-dir", "default")
    named = args.state_dir is not None and source != "$STATE_DIRECTORY"
    path = args.state_dir.split(":")[0] if args.state_dir else default_state_dir()
    config.set("state-dir", path)
    try:
        config.validate()
    except ConfigError as e:
        if named or not str(e).startswith("state-dir"):
            raise
        service.log("warning", f"change maps kept in memory only ({e}; give --state-dir)")
        config.state_dir = None
        config.validate()


def default_state_dir() -> str:
    """$STATE_DIRECTORY (what systemd gives a service with StateDirectory=); else /var/lib/tzero
    for root, $XDG_STATE_HOME/tzero (~/.local/state/tzero) for anyone else."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/tzero"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tzero")


def _activated_host() -> str:
    """The address the first activated NBD socket (a TCP one) listens on."""
    with socket.socket(fileno=os.dup(activation.START)) as s:
        return str(s.getsockname()[0])


def nbdkit_command(config: PluginConfig, nbd: NbdListen, verbose: bool = False, listen: bool = True) -> list[str]:
    """nbdkit's command line: listening at NBD itself when LISTEN (not when its sockets come from
    socket activation), with TLS for TCP when given certificates; -v for VERBOSE."""
    where = listen_args(nbd) if listen else [a for a in nbd.nbdkit_args() if a.startswith("--tls")]
    params = [f"export={n}={p}" for n, p in config.exports]
    control = f"control-fd={config.control_fd}" if config.control_fd is not None else f"control={config.control}"
    params += [control, f"side-memory={config.side_memory}", f"side-dir={config.side_dir}", f"chunk={config.chunk}"]
    if nbd.socket is not None:
        params.append(f"nbd-socket={nbd.socket}")
    else:
        params += [f"nbd-port={nbd.port}", f"nbd-host={nbd.host}"]
    if config.tls_certificates is not None:
        params.append(f"tls-certificates={config.tls_certificates}")
    if config.insecure_plaintext_tcp:
        params.append("insecure-plaintext-tcp=yes")
    if config.spill_keep is not None:
        params.append(f"spill-keep={config.spill_keep}")
    if not config.tracking:
        params.append("tracking=off")
    elif config.state_dir:
        params.append(f"state-dir={config.state_dir}")
    # One worker per connection: nbdkit 1.32 aborts (raw_send_socket: Assertion `sock >= 0')
    # when a client dies while several workers of its connection wait to send replies,
    # which is exactly a killed controller; and with the GIL, more workers per connection
    # only contend for it. Connections still run in parallel, so the plugin keeps its
    # PARALLEL thread model and its per-chunk locking.
    return ["nbdkit", "-f", "--exit-with-parent", "--threads", "1", *(["-v"] if verbose else []), *where,
            "python", PLUGIN, *params]
