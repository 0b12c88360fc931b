"""Taking a backup: the consistency group across subsystems, the plan, and the ordered copy.

    control_client  one control connection (a request and its reply are one Call)
    group           the consistency group: open, freeze all or none, thaw, heartbeat, close
    dataspec        --dataset NAME=SPEC parsed on its own
    partitions      GPT and MBR tables, through any read function
    layout          logical to physical: linear and striped layouts, pieces in stream order
    plan            specs resolved against the exports, before anything is frozen
    ledger          bytes still owed per concordance chunk, so a shared chunk is released once
    view_reader     libnbd connections to the time-zero views, a bounded buffer pool
    local_read      a view read straight from the device on the subsystem's host
    scheduler       which view reads next
    records         adjacent pieces joined into records
    reorder         chunks fetched ahead of their turn: bounded memory, then a spill file
    pressure        side-store pressure: saved chunks fetched ahead of their turn, released
    copier          the stream in order, from the reads and the reorder buffer; releases
    output          where the stream goes: FILE.partial renamed when complete, or stdout
"""
