"""Workloads and local subsystems for the demo, the tests and the benchmarks; not part of the
`tzero` command.

    workload         images with known content, stamped dependent writers, the time-zero check
    local_subsystem  `tzero serve` as a child process on this host
    demo             `make demo`
"""
