"""BENCHMARKS.md and docs/bench-latency.png from bench/results/*.json (one `make bench` run).

Every comparison is a ratio of figures measured in the same run, interleaved; the
text says which peer setting each ratio uses (QSD's better one, per figure).
"""

import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, RESULTS, MiB  # noqa: E402

PLOT = os.path.join(REPO, "docs", "bench-latency.png")
OUT = os.path.join(REPO, "BENCHMARKS.md")
QSD = ("qsd-default", "qsd-mw1")
QSD_FILE = ("qsd-default-file", "qsd-mw1-file")
LABEL = {"tzero": "tzero", "qsd-default": "QSD (as shipped)", "qsd-mw1": "QSD (max-workers=1)",
         "tzero-file": "tzero, to a file", "qsd-default-file": "QSD (as shipped), to a file",
         "qsd-mw1-file": "QSD (max-workers=1), to a file",
         "nbdkit-file": "nbdkit file (C)", "nbdcopy-tzero": "nbdcopy of tzero's live export",
         "nbdcopy-nbdkit-file": "nbdcopy of nbdkit file"}


def load(name: str) -> dict | None:
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def f(x, digits=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def better(d: dict, key: str, low: bool, among=QSD) -> str:
    """The QSD setting (of AMONG) with the better value of KEY (lower if LOW)."""
    return min(among, key=lambda q: d[q][key]) if low else max(among, key=lambda q: d[q][key])


def machine_section(m: dict) -> list[str]:
    return ["## Machine and versions", "",
            f"- {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}",
            f"- {m['nbdkit']}; {m['nbdcopy']}; {m['fio']}; {m['qemu-storage-daemon']}",
            f"- load average when the run started: {', '.join(f(x) for x in m['load_at_start'])} "
            "(the machine is shared with other work: every comparison is interleaved, ours then the peer's, "
            "again and again, so that load hits both alike)", ""]


def targets(core, ses, wc, mem, fb=None) -> list[str]:
    rows = []
    if ses:
        t = ses["two_exports"]["tzero"]
        rows.append(["pause max <= 5 ms (2 subsystems x 4 writers)", f(t["pause_ms_max"]),
                     verdict(t["pause_ms_max"] <= 5)])
        rows.append(["pause p99 <= 2 ms", f(t["pause_ms_p99"]), verdict(t["pause_ms_p99"] <= 2)])
        # The whole backup window: the stall at time zero and the copy after it, whichever was worse.
        window = {k: max(v["app_stall_ms_max"], v["copy_max_ms_max"]) for k, v in ses["two_exports"].items()
                  if isinstance(v, dict) and "app_stall_ms_max" in v}
        best = min((k for k in window if k != "tzero"), key=window.get)
        rows.append([f"a light writer's longest write in the backup window <= 2 ms, or no worse than the best peer's "
                     f"({LABEL[best]}: {f(window[best])} ms)", f"{f(window['tzero'])} ms",
                     verdict(window["tzero"] <= 2 or window["tzero"] <= window[best])])
    if wc:
        s = wc["summary"]
        ratio = s["tzero"]["held_vs_none"]
        rows.append(["write IOPS during a session >= 70% of none", f(ratio), verdict(ratio >= 0.7)])
        q2 = better(s, "iops_held", low=False)
        r2 = s["tzero"]["iops_held"] / s[q2]["iops_held"]
        rows.append([f"... and above QSD's during its job, both held without copying ({LABEL[q2]})",
                     f"{f(r2)} x", verdict(r2 > 1)])
        q = better(s, "iops_copying", low=False)
        r = s["tzero"]["iops_copying"] / s[q]["iops_copying"]
        rows.append([f"... same, while each copies ({LABEL[q]}; its copy took {f(s[q]['copy_s'])} s, "
                     f"tzero's {f(s['tzero']['copy_s'])} s)", f"{f(r)} x", verdict(r > 1)])
        for q, key, what in ((better(s, "iops_held", low=False, among=QSD_FILE), "iops_held", "held"),
                             (better(s, "iops_copying", low=False, among=QSD_FILE), "iops_copying", "copying")):
            r = s["tzero-file"][key] / s[q][key]
            rows.append([f"... same, both writing their backup to a file, {what} ({LABEL[q]})", f"{f(r)} x",
                         verdict(r > 1)])
        r = s["tzero"]["copying_vs_none"]
        rows.append(["fio 4k randwrite iodepth 16: IOPS while the backup copies >= 0.9 of none", f(r),
                     verdict(r >= 0.9)])
        r = s["tzero"]["backup_mib_s_under_load"] / s["qsd-mw1"]["backup_mib_s_under_load"]
        rows.append(["... backup MiB/s under that fio above QSD (max-workers=1)'s", f"{f(r)} x", verdict(r > 1)])
        r = s["tzero"]["backup_mib_s_idle"] / s["nbdcopy-tzero"]["mib_s"]
        rows.append(["idle backup >= 85% of nbdcopy of the same live export", f(r), verdict(r >= 0.85)])
        q = better(s, "backup_mib_s_idle", low=False)
        r = s["tzero"]["backup_mib_s_idle"] / s[q]["backup_mib_s_idle"]
        rows.append([f"idle backup faster than QSD's job, both thrown away ({LABEL[q]})", f"{f(r)} x", verdict(r > 1)])
        q = better(s, "backup_mib_s_idle", low=False, among=QSD_FILE)
        r = s["tzero-file"]["backup_mib_s_idle"] / s[q]["backup_mib_s_idle"]
        rows.append([f"... both writing a file ({LABEL[q]})", f"{f(r)} x", verdict(r > 1)])
    if fb:
        s = fb["summary"]
        rows.append(["idle backup of 2 x 1 GiB into a file >= 0.9 of `cat` into the same file (whole command)",
                     f(s["vs_cat_wall"]), verdict(s["vs_cat_wall"] >= 0.9)])
        rows.append(["... the same, by tzero's own elapsed time", f(s["vs_cat_elapsed"]),
                     verdict(s["vs_cat_elapsed"] >= 0.9)])
        rows.append(["... faster than QSD (max-workers=1) into raw files (whole command)", f"{f(s['vs_qsd_wall'])} x",
                     verdict(s["vs_qsd_wall"] > 1)])
    if mem:
        m = mem["memory"]
        rows.append(["plugin RSS <= side-memory + 64 MiB",
                     f"{f(m['plugin_peak_rss_mib'], 0)} MiB (bound {f(m['plugin_bound_mib'], 0)})",
                     verdict(m["plugin_within_bound"])])
        rows.append(["controller RSS <= host-memory + 64 MiB",
                     f"{f(m['controller_peak_rss_mib'], 0)} MiB (bound {f(m['controller_bound_mib'], 0)})",
                     verdict(m["controller_within_bound"])])
    return ["## Targets", ""] + table(["target", "figure", ""], rows)


def core_section(core: dict) -> list[str]:
    s = core["summary"]
    return ["## The core figures (bench/core.py)", "",
            "2 subsystems x 4 dependent writers, 10 sessions; an idle 1 GiB export; fio on it.", ""] + table(
        ["figure", "value"],
        [["pause_ms max / p99 (gate)", f"{f(s['pause_ms_max'])} / {f(s['pause_ms_p99'])}"],
         ["application's longest write at time zero, max / p99 (ms)",
          f"{f(s['app_stall_ms_max'])} / {f(s['app_stall_ms_p99'])}"],
         ["writers' own p99 latency with no backup (ms)", f(s["app_quiet_p99_ms"])],
         ["`tzero backup` vs `nbdcopy` reading the same live export",
          f"{f(s['backup_vs_nbdcopy'])} ({f(s['tzero_mib_s'], 0)} vs {f(s['nbdcopy_mib_s'], 0)} MiB/s)"],
         ["fio 4k randwrite IOPS, session vs none",
          f"{f(s['iops_session_vs_none'])} ({f(s['iops_session'], 0)} vs {f(s['iops_no_session'], 0)})"]])


def pause_section(ses: dict) -> list[str]:
    out = ["## 1. Pause: what the application feels at time zero", "",
           ses["note"].replace("\n", " "), ""]
    for shape in ("two_exports", "eight_exports"):
        d = ses[shape]
        q = better(d, "app_stall_ms_max", low=True)
        rows = [[LABEL[n], d[n]["pause_ms_max"], d[n]["pause_ms_p99"], d[n]["app_stall_ms_max"],
                 d[n]["app_stall_ms_p99"], d[n]["copy_write_rate_mean"], d[n]["copy_max_ms_max"], d[n]["copy_s_mean"]]
                for n in ("tzero", *QSD)]
        rows.append([f"tzero / {LABEL[q]}"] + [d["tzero"][k] / d[q][k] if d[q][k] else None for k in
                     ("pause_ms_max", "pause_ms_p99", "app_stall_ms_max", "app_stall_ms_p99",
                      "copy_write_rate_mean", "copy_max_ms_max", "copy_s_mean")])
        out += [f"### {d['shape']}, {d['tzero']['sessions']} backups each", ""]
        out += table(["", "pause max (ms)", "pause p99", "app stall max (ms)", "app stall p99",
                      "writes/s during copy vs before", "longest write during copy (ms)", "copy (s)"], rows)
    out += ["Pause: tzero's gate figure; QSD's `transaction` round trip (it drains every disk inside it). "
            "App stall: the longest write of any writer in flight while writes could have been held. "
            "The ratio row compares with the QSD setting whose app stall was lower.", ""]
    return out


def writecost_section(wc: dict) -> list[str]:
    s = wc["summary"]
    rows = []
    phases = ("none", "held", "copying", "after")
    for n in ("tzero", *QSD, "tzero-file", *QSD_FILE):
        x = s[n]
        rows.append([LABEL[n], *(x.get(f"iops_{ph}") for ph in phases),
                     " / ".join(f(x.get(f"p99_ms_{ph}")) for ph in phases),
                     " / ".join(f(x.get(f"max_ms_{ph}"), 0) for ph in phases)])
    x = s["nbdkit-file"]
    rows.append([LABEL["nbdkit-file"], x["iops_none"], "-", "-", "-", f(x["p99_ms_none"]), f(x["max_ms_none"], 0)])
    ratio_rows = []
    for ph in ("none", "held", "copying", "after"):
        q = better(s, f"iops_{ph}", low=False)
        ratio_rows.append([ph, s["tzero"][f"iops_{ph}"] / s["tzero"]["iops_none"],
                           s["tzero"][f"iops_{ph}"] / s[q][f"iops_{ph}"], LABEL[q]])
    for ph in ("held", "copying"):
        q = better(s, f"iops_{ph}", low=False, among=QSD_FILE)
        ratio_rows.append([f"{ph}, both writing a file", s["tzero-file"][f"{ph}_vs_none"],
                           s["tzero-file"][f"iops_{ph}"] / s[q][f"iops_{ph}"], LABEL[q]])
    ratio_rows.append(["none, vs nbdkit file (C)", 1.0, s["tzero"]["iops_none"] / s["nbdkit-file"]["iops_none"],
                       LABEL["nbdkit-file"]])
    return (["## 2. Write cost: fio on a live 1 GiB export", "",
             f"{wc['fio']}, {wc['fio_seconds']} s per phase, {wc['rounds']} rounds ({wc['order']}). "
             "Phases: none; held (a session open, nothing copying: tzero's held through the control protocol, "
             "QSD's job at one byte a second); copying (during a full backup); after (once it finished). "
             f"{wc['note']}.", ""]
            + table(["", "IOPS none", "held", "copying", "after", "p99 ms none/held/copying/after",
                     "max ms none/held/copying/after"], rows)
            + table(["phase", "tzero vs its own none", "tzero vs the better peer", "peer"], ratio_rows)
            + warm_up_lines(wc))


def warm_up_lines(wc: dict) -> list[str]:
    w = wc.get("warm_up_held_iops")
    if not w:
        return []
    return ["Before the rounds every system ran one held phase that does not count: the first session after a "
            "start saves into never-touched memory (tzero's side store, QSD's buffers), which costs a page fault "
            "per page on this host. Its IOPS, the cost of the first backup after a start: "
            + ", ".join(f"{LABEL[n]} {f(v, 0)}" for n, v in w.items()) + ".", ""]


def speed_section(wc: dict) -> list[str]:
    s = wc["summary"]
    rows = [[LABEL[n], s[n]["backup_mib_s_idle"], s[n]["backup_mib_s_under_load"]]
            for n in ("tzero", *QSD, "tzero-file", *QSD_FILE)]
    rows += [[LABEL[n], s[n]["mib_s"], "-"] for n in ("nbdcopy-tzero", "nbdcopy-nbdkit-file")]
    t = s["tzero"]
    ratios = [["tzero / nbdcopy of its live export (idle)", t["backup_mib_s_idle"] / s["nbdcopy-tzero"]["mib_s"]],
              ["tzero / nbdcopy, counting the whole command's wall time",
               t["backup_mib_s_idle_wall"] / s["nbdcopy-tzero"]["mib_s"]]]
    for q in QSD:
        ratios.append([f"tzero / {LABEL[q]} (idle)", t["backup_mib_s_idle"] / s[q]["backup_mib_s_idle"]])
        ratios.append([f"tzero / {LABEL[q]} (under fio)",
                       t["backup_mib_s_under_load"] / s[q]["backup_mib_s_under_load"]])
    for q in QSD_FILE:
        ratios.append([f"tzero / {LABEL[q]}, both to a file (idle)",
                       s["tzero-file"]["backup_mib_s_idle"] / s[q]["backup_mib_s_idle"]])
        ratios.append([f"tzero / {LABEL[q]}, both to a file (under fio)",
                       s["tzero-file"]["backup_mib_s_under_load"] / s[q]["backup_mib_s_under_load"]])
    ratios.append(["nbdcopy: tzero's live export / nbdkit file (C)",
                   s["nbdcopy-tzero"]["mib_s"] / s["nbdcopy-nbdkit-file"]["mib_s"]])
    return (["## 3. Backup speed (1 GiB, MiB/s)", "",
             "tzero: `tzero backup -o -` to /dev/null or over a file, timed by its own `elapsed_s` (connect "
             "to close; the second ratio counts the whole command, interpreter start included). QSD: from "
             "sending the `transaction` to the job's completion event, target `null-co` or a raw file. "
             "nbdcopy: `nbdcopy URI null:`, wall time.", ""]
            + table(["", "idle", "under fio randwrite"], rows) + table(["ratio", "value"], ratios))


def memory_section(mem: dict) -> list[str]:
    m = mem["memory"]
    out = ["## 4. Memory under overwrite pressure", "", mem["note"].replace("\n", " "), ""]
    out += table(["", "value"], [
        ["bytes saved by copy-before-write / side-memory", m["cow_vs_side_memory"]],
        ["plugin peak RSS (MiB) / bound", f"{f(m['plugin_peak_rss_mib'], 0)} / {f(m['plugin_bound_mib'], 0)}"],
        ["controller peak RSS (MiB) / bound",
         f"{f(m['controller_peak_rss_mib'], 0)} / {f(m['controller_bound_mib'], 0)}"]])
    rows = []
    for g in mem["growth"]:
        if "skipped" in g:
            rows.append([f"{g['export_bytes'] >> 20} MiB", "skipped: " + g["skipped"], "-", "-", "-", "-"])
        else:
            rows.append([f"{g['export_bytes'] >> 20} MiB", g["elapsed_s"], g["mib_s"], g["vs_nbdcopy"],
                         g["controller_peak_rss_mib"], g["plugin_peak_rss_mib"]])
    out += ["## 5. Growth: an idle backup of one export", ""]
    out += table(["size", "time (s)", "MiB/s", "vs nbdcopy", "controller peak RSS (MiB)",
                  "plugin peak RSS (MiB)"], rows)
    return out


def plot(timeline: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    systems = [n for n in ("tzero", *QSD) if n in timeline["systems"]]
    fig, axes = plt.subplots(len(systems), 1, figsize=(10, 2.6 * len(systems)), sharex=True, sharey=True)
    for ax, name in zip(axes, systems, strict=False):
        d = timeline["systems"][name]
        xs = [p[0] for p in d["points"]]
        ys = [max(p[1], 0.01) for p in d["points"]]
        ax.scatter(xs, ys, s=2, alpha=0.5, linewidths=0)
        slow = [(x, y) for x, y in zip(xs, ys, strict=False) if y >= 10]
        if slow:
            ax.scatter([p[0] for p in slow], [p[1] for p in slow], s=14, color="crimson",
                       label="writes of 10 ms or more")
        ax.axvline(0, color="red", linewidth=1, label="time zero")
        ax.axvline(d["copy_end_s"], color="green", linewidth=1, linestyle="--", label="backup complete")
        ax.set_yscale("log")
        ax.set_title(f"{LABEL[name]}: pause {d['pause_ms']:.2f} ms", fontsize=10)
        ax.set_ylabel("write latency (ms)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes:
        ax.legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("seconds from time zero (submission time of each 4 KiB dependent write)")
    fig.suptitle(f"Application write latency around time zero and through the copy\n{timeline['shape']}, 4 writers",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    return True


NOTES = """## Reading these figures

- QSD copies inside the process that serves the disk, straight from the file into its
  target (`null-co`, which throws the data away, or a raw file); tzero's controller reads
  every byte through an NBD connection to the plugin and writes a checksummed stream. QSD's
  job is the peer the issue names, not a like-for-like pipeline; nbdcopy reading tzero's
  own live export is the read limit of the same path. With `null-co` QSD neither writes a
  backup nor pays for saving old data (its copy-before-write writes into the same
  `null-co`): the "to a file" rows are the comparison of two real backups.
- tzero's plugin is served with `nbdkit --threads 1` (controller/cli/serve.py says why):
  one connection's requests run one after another, while QSD and nbdkit's file plugin
  run a connection's requests on a pool of threads. fio uses one connection.
- QSD's backup target and tzero's side store differ: copy-before-write in QSD writes the
  old data to the target (free with `null-co`), tzero keeps it in the side store (memory,
  then a spill file) until the copier has it.
- On this machine memory and page cache that were freed go back to the host and cost a
  first touch again; the images are written once per run, but every process still
  touches its own new buffers (tzero's side store and spill file, QSD's bounce buffers),
  which is part of what each system costs here.
- How fast the page cache reads depends on how it was filled, and the figures move with
  it: a 1 GiB preadv loop ran at 10-12 GB/s over a file its own process had just written,
  at 1.5-2 GB/s over the same pages from another process or into a buffer not on huge
  pages. tzero reads where it is served with `--read-path auto` (the default, straight
  from the device; see docs/architecture.md) and its buffers are on huge pages; QSD and
  nbdcopy read as they ship.
- tzero flushes its exports once per session (time zero durable on the source), QSD's job
  does not: under load that flush is part of tzero's copy time; the idle runs start from
  a sync, so that no system pays for the writeback of an earlier phase.
"""


def net_section(net: dict) -> list[str]:
    s = net["summary"]
    r = s["tls_vs_unix"]
    rows = [[name, f"{f(s[k]['pause_ms_p50'])} / {f(s[k]['pause_ms_max'])}",
             f"{f(s[k]['pause_wall_ms_p50'])} / {f(s[k]['pause_wall_ms_max'])}", s[k]["backup_mib_s"],
             s[k]["nbdcopy_mib_s"], s[k]["backup_mib_s"] / s[k]["nbdcopy_mib_s"]]
            for name, k in (("unix sockets", "unix"), ("TCP + TLS (loopback)", "tls"))]
    rows.append(["TLS / unix", f(r["pause_ms_p50"]), "-", r["backup"], r["nbdcopy"], "-"])
    load_note = ", ".join(f(x) for x in net["machine"]["load_at_start"])
    return ["## 7. Two subsystems over TCP with mutual TLS vs unix sockets (bench/net.py)", "",
            f"Two subsystems, one idle {net['export_bytes'] >> 20} MiB export each, served over unix sockets, then "
            "the same files over TCP with TLS on loopback (the cost of TLS and TCP, not of a wire), "
            f"interleaved by round ({net['rounds']} rounds). Pause: {net['writers']} dependent writers over "
            f"the set's own URIs, {net['sessions']} sessions opened, frozen, thawed and closed. Backup: "
            "`tzero backup --read-path nbd` of both, stream thrown away; nbdcopy: two at once to null: over "
            f"the same URIs. Run {net['started']}; load average when it started: {load_note}.", ""] + table(
        ["", "gate pause p50 / max (ms)", "freeze-to-thaw at the controller p50 / max (ms)", "backup MiB/s",
         "nbdcopy MiB/s", "backup / nbdcopy"], rows)


def filebackup_section(fb: dict) -> list[str]:
    s = fb["summary"]
    load_note = ", ".join(f(x) for x in fb["machine"]["load_at_start"])
    rows = [["into a file (in place)", f(s["tzero_wall_s"]), f(s["tzero_elapsed_s"]), f(s["cat_s"]),
             f(s["qsd_mw1_s"]), f"{f(s['vs_cat_wall'])} / {f(s['vs_cat_elapsed'])}",
             " ".join(f(x) for x in s["vs_cat_wall_rounds"]),
             f"{f(s['vs_qsd_wall'])} / {f(s['vs_qsd_elapsed'])}"],
            ["into a pipe (`cat > /dev/null`)", f(s["tzero_pipe_wall_s"]), f(s["tzero_pipe_elapsed_s"]),
             f(s["cat_pipe_s"]), "-", f"{f(s['pipe_vs_cat_wall'])} / {f(s['pipe_vs_cat_elapsed'])}",
             " ".join(f(x) for x in s["pipe_vs_cat_wall_rounds"]), "-"]]
    return ["## 11. Idle backup into a file (bench/filebackup.py)", "",
            f"One subsystem serving two idle {fb['export_bytes'] >> 30} GiB images (incompressible, no zeros); "
            "`tzero backup -o -` with its output a file opened without O_TRUNC (made once, written fully once "
            "by an untimed run, then overwritten in place, never synced), against `cat` of the two images into "
            "the same file the same way (the limit of moving those bytes here) and QSD's two sync=full backup "
            "jobs (one transaction, max-workers=1) into raw files; then tzero and cat into a pipe whose reader "
            f"throws the bytes away. Means of {fb['rounds']} rounds ({fb['order']}), each run after an "
            f"untimed sync. Ratios are speeds (peer time / tzero time). Load average at the start: {load_note}.",
            ""] + table(["", "tzero wall s", "tzero elapsed s", "cat s", "QSD (max-workers=1) s",
                         "vs cat: wall / elapsed", "vs cat (wall) by round", "vs QSD: wall / elapsed"], rows)


def incremental_section(inc: dict) -> list[str]:
    s = inc["summary"]
    lines = ["## 8. Incremental backups", "",
             f"One {inc['export_bytes'] >> 30} GiB image; between a full backup and an incremental one, "
             f"{inc['share']:.0%} of it rewritten through the system's live export, in random 64 KiB-aligned "
             "64 KiB pieces (clustered) or random 4 KiB pieces (scattered: they touch far more 64 KiB chunks). "
             "tzero: `tzero backup -o FILE`, then `--since FILE`, and a full backup of that same state; QSD: "
             "block-dirty-bitmap-add (64 KiB granularity) with a sync=full blockdev-backup, then "
             "sync=incremental; all into files. Means of "
             f"{inc['rounds']} interleaved rounds. tzero's wall time is the whole `tzero backup` process, its "
             "elapsed time its own figure from the start of its work; QSD's is the job's, from the QMP command "
             "to its completion event.", ""]
    rows = []
    for w in ("clustered", "scattered"):
        x = s[w]
        rows.append([w, f(x["tzero_changed_bytes"] / MiB, 1), f(x["tzero_inc_bytes"] / MiB, 1),
                     f(x["tzero_full_bytes"] / MiB, 1), f(x["tzero_inc_bytes"] / x["tzero_full_bytes"], 3),
                     f(x["tzero_inc_s"]), f(x["tzero_inc_elapsed_s"]), f(x["tzero_full_s"]),
                     f(x["tzero_inc_s"] / x["tzero_full_s"]), f(x["qsd_inc_bytes"] / MiB, 1), f(x["qsd_inc_s"]),
                     f(x["qsd_full_s"])])
    lines += table(["workload", "tzero changed MiB", "tzero incremental MiB", "tzero full MiB", "bytes inc/full",
                    "tzero inc wall s", "tzero inc elapsed s", "tzero full wall s", "time inc/full",
                    "QSD incremental MiB", "QSD inc s", "QSD full s"], rows)
    i = s["iops"]
    lines += [f"Write IOPS ({inc['fio']}, {inc['fio_seconds']} s, {inc['iops_rounds']} rounds each, in turns) on "
              f"tzero's live export: {f(i['tracking'], 0)} with change tracking, {f(i['no_tracking'], 0)} "
              f"served with --no-tracking: a ratio of {f(i['ratio'])}.", ""]
    return lines


def main() -> int:
    core, ses, wc, mem, tl, net = (load(n) for n in ("core", "sessions", "writecost", "memory", "timeline", "net"))
    inc = load("incremental")
    fb = load("filebackup")
    machine = (core or {}).get("machine")
    lines = ["# Benchmarks", "",
             f"Written by `make bench` (bench/report.py) on {datetime.date.today().isoformat()} from "
             "bench/results/*.json, all from one run. Every figure compares tzero with a peer measured in the "
             "same run, interleaved. Benchmarks, not tests: the figures move with the machine's load.", ""]
    if machine:
        lines += machine_section(machine)
    lines += targets(core, ses, wc, mem, fb)
    if core:
        lines += core_section(core)
    if ses:
        lines += pause_section(ses)
    if wc:
        lines += writecost_section(wc) + speed_section(wc)
    if mem:
        lines += memory_section(mem)
    if tl and plot(tl):
        lines += ["## 6. Write latency over time", "",
                  "![write latency around time zero](docs/bench-latency.png)", "",
                  "Each dot is one 4 KiB dependent write, placed at its submission (slow ones all, one in eight "
                  "of the rest), from one backup per system in the pause runs of section 1: a write held "
                  "across time zero shows as one high dot just left of the red line.", ""]
    if net:
        lines += net_section(net)
    if inc:
        lines += incremental_section(inc)
    s3 = load("s3")
    if s3:
        from bench import s3 as s3_bench

        lines += s3_bench.report_section(s3)
    rate = load("rate")
    if rate:
        from bench import rate as rate_bench

        lines += rate_bench.report_section(rate)
    if fb:
        lines += filebackup_section(fb)
    lines += NOTES.splitlines()
    with open(OUT, "w") as out:
        out.write("\n".join(lines).rstrip() + "\n")
    print(f"bench: wrote {OUT}" + (f" and {PLOT}" if tl else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
