#!/usr/bin/env python3
"""How much CPU did processes OUTSIDE the load harness use during a run?

    other_cpu.py snap STATE_FILE ROOT_PID   # before the run
    other_cpu.py diff STATE_FILE ROOT_PID   # after it: prints CPU-seconds

Counts every user process that is not ROOT_PID or one of its descendants
(kernel threads are left out): utime+stime plus cutime+cstime (children it
reaped, e.g. rustc under cargo). The machine is shared, and a build running
next to the load test moves the numbers; this makes that visible.
"""
import json
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")


def processes():
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): ppid=4, utime=14, stime=15, cutime=16, cstime=17, starttime=22
        ppid = int(fields[1])
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        procs[int(d)] = (ppid, ticks, fields[19])
    return procs


def others(root):
    procs = processes()
    children = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, []))
    kernel = {pid for pid, (ppid, _, _) in procs.items() if pid == 2 or ppid == 2}
    # key: pid and start time, so a reused pid is a new process
    return {f"{pid}:{start}": ticks for pid, (_, ticks, start) in procs.items() if pid not in ours and pid not in kernel}


def main():
    mode, state, root = sys.argv[1], sys.argv[2], int(sys.argv[3])
    now = others(root)
    if mode == "snap":
        with open(state, "w") as f:
            json.dump(now, f)
        return
    with open(state) as f:
        before = json.load(f)
    # Totals, not per-process differences: a process that ended during the
    # run leaves its ticks in "before" and moves them into its (foreign)
    # parent's cutime, so they cancel out.
    used = sum(now.values()) - sum(before.values())
    print(f"{max(used, 0) / TICK:.1f}")


main()
