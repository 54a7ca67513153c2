"""Memory of idle instances: USS and PSS (psutil, from /proc/<pid>/smaps) of process trees.

An *instance* is the set of processes that exist for one unit that serves requests and nothing
else: a leaf process that serves (a runtime instance, a gunicorn worker, serverless-offline's
Python child) plus its own descendants, plus any ancestor below the platform's root process whose
only serving leaf it is (a wrapper such as ``sh -c`` or a sandbox launcher). What the leaves share
(the appliance's server, a gunicorn master, serverless-offline's node process) is the *platform*.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil

from .stats import percentile

MB = 1024 * 1024


def _mem(p: psutil.Process) -> tuple[float, float, float]:
    m = p.memory_full_info()
    return m.uss, getattr(m, "pss", m.uss), m.rss


def instance_trees(root_pid: int, is_leaf: Callable[[psutil.Process], bool]) -> list[list[psutil.Process]]:
    """For each serving leaf below ``root_pid``, the processes that belong to it alone."""
    try:
        root = psutil.Process(root_pid)
        desc = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    by_pid = {p.pid: p for p in desc}
    leaves = []
    for p in desc:
        try:
            if is_leaf(p):
                leaves.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    # Drop leaves that sit below another leaf (their tree is counted with it).
    leaf_pids = {p.pid for p in leaves}

    def ancestors(p: psutil.Process) -> list[int]:
        out, cur = [], p
        while True:
            try:
                ppid = cur.ppid()
            except psutil.NoSuchProcess:
                break
            if ppid == root_pid or ppid not in by_pid:
                break
            out.append(ppid)
            cur = by_pid[ppid]
        return out

    top_leaves = [p for p in leaves if not (set(ancestors(p)) & leaf_pids)]
    owners: dict[int, set[int]] = {}
    for leaf in top_leaves:
        for a in ancestors(leaf):
            owners.setdefault(a, set()).add(leaf.pid)
    trees = []
    for leaf in top_leaves:
        procs = [leaf]
        try:
            procs += leaf.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        procs += [by_pid[a] for a in ancestors(leaf) if owners.get(a) == {leaf.pid}]
        trees.append(procs)
    return trees


def tree_memory(procs: list[psutil.Process]) -> dict | None:
    uss = pss = rss = 0.0
    try:
        for p in procs:
            u, s, r = _mem(p)
            uss, pss, rss = uss + u, pss + s, rss + r
    except psutil.NoSuchProcess:
        return None
    return {"uss_mb": uss / MB, "pss_mb": pss / MB, "rss_mb": rss / MB, "processes": len(procs),
            "pids": [p.pid for p in procs]}


def per_instance(root_pid: int, is_leaf: Callable[[psutil.Process], bool]) -> dict:
    """Median USS/PSS/RSS over the instances below ``root_pid``, with each instance's figures."""
    each = [m for m in (tree_memory(t) for t in instance_trees(root_pid, is_leaf)) if m]
    out = {"instances": len(each), "each": each}
    for k in ("uss_mb", "pss_mb", "rss_mb"):
        out[k] = percentile([m[k] for m in each], 50) if each else None
    return out


def platform(root_pid: int, is_leaf: Callable[[psutil.Process], bool]) -> dict | None:
    """USS/PSS/RSS of the root and every process below it that no instance owns."""
    try:
        root = psutil.Process(root_pid)
        desc = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    owned = {p.pid for t in instance_trees(root_pid, is_leaf) for p in t}
    return tree_memory([root] + [p for p in desc if p.pid not in owned])
