"""The nbdkit plugin: one storage subsystem, serving its devices over NBD and taking their
backups' copy-before-write, driven by a controller over a control socket.

    plugin         the nbdkit callbacks, each a few lines that delegate (thread model PARALLEL)
    config         the start-up parameters (export=NAME=PATH, control=, side-memory=, ...), validated
    device         one served block device or image file: positional I/O, flush, trim, zero, extents
    subsystem      the exports, the one open session, and what each control request does
    control        the control server: the accept thread, a thread per connection, the watchdog
    listener       the control channel's socket: unix (0600) or TCP, the TLS handshake
    gate           one export's write gate: freeze, thaw, the freeze deadline
    session        one backup session: the concordance, copy-before-write, the time-zero view, release
    chunkmap       one export's chunk states, shared read-only with a controller on the same host
    sidestore      one session's saved chunks, in memory slots, then spill slots
    slots          the memory and the spill file behind every session's side store, kept between sessions
    backup_plugin  a second plugin, apart from the rest: serves a backup file read-only
    stubs/         nbdkit.pyi: the types of the module nbdkit puts in its embedded Python

Imports common/ only (backup_plugin: backupformat/ only): it runs in nbdkit's embedded Python.

LOCKS, outermost first

    1. ChunkMap stripe locks   chunk c's state, under stripe c % STRIPES. A view read takes
                               the stripes of all its chunks, in ascending order; copy-before-write
                               and release take one at a time.
    2. Session._lock           phase, abort_reason
       WriteGate._lock         frozen, in-flight count, deadline (its condition shares the lock)
       SideStore._lock         the saved keys and the byte counts
       SlotPool._lock          the free lists, the slots made, the spill file's creation
       Subsystem._lock         session, last_status

Only stripe locks are ever held while another lock is taken. No level-2 lock is held while
another lock is taken, a callback runs or anything is waited for (a wait on a gate's condition
releases its lock); two are held across system calls: SlotPool's while it makes or cuts the
spill file, Subsystem's while _open makes the session's maps. Were one ever to nest, keep the
order above: Session, then WriteGate and SideStore, then SlotPool, and Subsystem last.
Under a stripe lock:

    copy-before-write   SideStore.save: SlotPool._lock (take a slot), SideStore._lock (record
                        it), one after the other; on failure, Session.abort (below)
    view read           SideStore.read_into: SideStore._lock
    release             SideStore.discard: SideStore._lock, then SlotPool._lock (give the slot)

ABORT AND CLOSE. Session.abort and Session.close hold Session._lock only to set the DEAD flag,
the phase and the reason; then, without it, they clean up: thaw every gate (WriteGate._lock),
close the maps, SideStore.close (SideStore._lock, then SlotPool._lock), and on_end, which is
Subsystem._session_ended (Subsystem._lock). So an abort may run under a stripe lock (a failed
copy-before-write aborts under its chunk's) but never under a level-2 lock: that is why a gate
calls on_expire only once it has released its lock, and why nothing under Subsystem._lock aborts.
The clean-up runs on the thread that aborts:

    an nbdkit worker thread    a writer's copy-before-write failed (side store full, device read
                               error); or a writer waiting at a frozen gate saw its deadline pass
    the watchdog thread        a freeze outlived its deadline, or the lease expired
    a control connection's     an abort request, a failed freeze, close, or the connection
      thread                   hung up (connection_closed)
    the flush thread           the flush after thaw failed

THREADS

    nbdkit's main thread       config, config_complete, get_ready (opens the devices, binds the
                               control socket), after_fork (starts the control threads), cleanup
    nbdkit's worker threads    the I/O callbacks: live and time-zero reads, mutations through
                               Subsystem.mutate (gate, then copy-before-write), flush, extents
    tzero-control              accepts control connections
    tzero-conn                 one per control connection: the TLS handshake, then request,
                               Subsystem.handle, reply, in turn
    tzero-watchdog             every WATCHDOG_INTERVAL_S: expires overdue freezes and leases
    tzero-flush                one per thaw that asks for it: flushes the session's devices
"""
