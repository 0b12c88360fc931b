"""The nbdkit plugin: one storage subsystem, serving its devices over NBD and taking their
backups' copy-before-write, driven by a controller over a control socket.

    plugin         the nbdkit callbacks, each a few lines that delegate (thread model PARALLEL)
    config         the start-up parameters (export=NAME=PATH, control=, side-memory=, ...), validated
    device         one served block device or image file: positional I/O, flush, trim, zero, extents
    imagelock      the image locks QEMU takes and tests: nobody else writes a served disk
    subsystem      the exports, the one open session, and what each control request does
    control        the control server: the accept thread, a thread per connection, the watchdog
    listener       the control channel's socket: unix (0600) or TCP, the TLS handshake
    gate           one export's write gate: freeze, thaw, the freeze deadline
    session        one backup session: the concordance, copy-before-write, the time-zero view, release
    chunkmap       one export's chunk states, shared read-only with a controller on the same host
    sidestore      one session's saved chunks, in memory slots, then spill slots
    slots          the memory and the spill file behind every session's side store, kept between sessions
    tracking       one export's change map: chunks changed since each of its last backups (generations)
    changestate    change maps on disk in the state directory: trusted only after a clean stop
    tracker        every export's change map: made or loaded at start, asked at open, saved at a clean stop
    backup_plugin  a second plugin, apart from the rest: serves a backup file read-only
    stubs/         nbdkit.pyi: the types of the module nbdkit puts in its embedded Python

Imports common/ only (backup_plugin: backupformat/ only): it runs in nbdkit's embedded Python.

LOCKS, outermost first

    1. ChunkMap stripe locks   chunk c's state, under stripe c % STRIPES. A view read, and
                               release one batch of chunks at a time, take the stripes of all
                               their chunks in ascending order; copy-before-write takes one at a time.
    2. Session._lock           phase, abort_reason
       WriteGate._lock         frozen, in-flight count, deadline (its condition shares the lock)
       SideStore._lock         the saved keys and the byte counts
       SlotPool._lock          the free lists, the slots made, the spill file's creation
       Subsystem._lock         session, last_status, stopping
       StateDir._save_lock     one change-map file written at a time
    3. ChangeMap._lock         generations, deltas, frozen maps (never `bits`: marks take no lock);
                               taken under Session._lock (prepare, form_concordance: the maps
                               freeze with the session's phase), and nothing is taken under it

Only stripe locks, and Session._lock for ChangeMap._lock, are ever held while another lock is
taken. No other level-2 lock is held while another lock is taken, a callback runs or anything
is waited for (a wait on a gate's condition releases its lock); three are held across system
calls: SlotPool's while it makes or cuts the spill file, Subsystem's while _open makes the
session's maps, StateDir's while it writes and syncs a map file. Session's is held while
prepare narrows the concordance (whole-map arithmetic, before the session is active). Were
one ever to nest, keep the order above: Session, then WriteGate and SideStore, then SlotPool,
and Subsystem last; ChangeMap innermost.
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

    nbdkit's main thread       config, config_complete, get_ready (opens the devices, loads the
                               change maps, binds the control socket), after_fork (starts the
                               control threads), cleanup (a clean stop: seals the gates, saves
                               the change maps)
    nbdkit's worker threads    the I/O callbacks: live and time-zero reads, mutations through
                               Subsystem.mutate (gate, change map, then copy-before-write),
                               flush, extents
    tzero-control              accepts control connections
    tzero-conn                 one per control connection: the TLS handshake, then request,
                               Subsystem.handle, reply, in turn
    tzero-watchdog             every WATCHDOG_INTERVAL_S: expires overdue freezes and leases
    tzero-flush                one per thaw that asks for it: flushes the session's devices
"""
