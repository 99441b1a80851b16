"""Run jobs in a given order on a few worker threads, each only after the jobs it needs.

Introduced in notebook 01_dataset: ``mlmlmlm book --jobs N`` runs the experiments of the book
this way (a translation run waits for its codecs, the live record for its translators). Each
job is a papermill kernel, a process of its own, so threads are enough to run them side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def run_in_order(jobs: Sequence[K], needs: dict[K, set[K]], work: Callable[[K], object],
                 workers: int = 1, done: Callable[[K, object], None] | None = None) -> dict:
    """``work(job)`` for every job of ``jobs``, on up to ``workers`` threads, returning
    ``{job: result}``.

    A job starts once every job it ``needs`` (among ``jobs``; others are taken as done) has
    finished. One worker takes the first such job in ``jobs``' order, so it runs exactly the
    sequential order; several take first the job with the longest chain of jobs waiting on it
    (then ``jobs``' order), so that the end of a chain (the smoke book's live record, after its
    codecs and translators) does not run alone on one worker while the others idle. A job whose
    ``work`` raises still counts as finished for those that need it (they run and meet the
    failure themselves); its exception is raised at the end, after every other job has run. ``done(job, result)`` is called as each finishes, one at a time.
    A cycle in ``needs`` raises ``ValueError`` before anything runs.
    """
    order = {j: i for i, j in enumerate(jobs)}
    wanted = {j: {n for n in needs.get(j, set()) if n in order and n != j} for j in jobs}
    _check_acyclic(wanted)
    results: dict = {}
    errors: list[BaseException] = []
    finished: set = set()
    lock = threading.Lock()
    height = _heights(wanted)
    waiting = sorted(jobs, key=lambda j: (-height[j], order[j]) if workers > 1 else order[j])
    running: dict[Future, K] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while waiting or running:
            ready = [j for j in waiting if wanted[j] <= finished]
            while ready and len(running) < max(1, workers):
                job = ready.pop(0)
                waiting.remove(job)
                running[pool.submit(work, job)] = job
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in sorted(complete, key=lambda f: order[running[f]]):
                job = running.pop(fut)
                finished.add(job)
                try:
                    results[job] = fut.result()
                except Exception as exc:  # noqa: BLE001 - re-raised once every job has run
                    errors.append(exc)
                    results[job] = exc
                if done is not None:
                    with lock:
                        done(job, results[job])
    if errors:
        raise errors[0]
    return results


def _heights(needs: dict) -> dict:
    """``{job: the longest chain of jobs that need it, directly or not}`` (0: none does)."""
    users: dict = {j: [] for j in needs}
    for j, ns in needs.items():
        for n in ns:
            users[n].append(j)
    height: dict = {}

    def h(j):
        if j not in height:
            height[j] = max((1 + h(u) for u in users[j]), default=0)
        return height[j]

    for j in needs:
        h(j)
    return height


def _check_acyclic(needs: dict) -> None:
    state: dict = {}

    def visit(j, path):
        if state.get(j) == "done":
            return
        if state.get(j) == "open":
            raise ValueError("jobs need each other in a cycle: " + " -> ".join(map(str, path + [j])))
        state[j] = "open"
        for n in sorted(needs[j], key=str):
            visit(n, path + [j])
        state[j] = "done"

    for j in needs:
        visit(j, [])
