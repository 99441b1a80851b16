"""run_in_order: jobs side by side, each after what it needs; the runbook's graph of runs."""

from __future__ import annotations

import threading
import time

import pytest

from mlmlmlm.schedule import run_in_order


def _recorder(sleep: dict | None = None, fail: set | None = None):
    events, lock = [], threading.Lock()
    live, peak = [0], [0]

    def work(job):
        with lock:
            events.append(("start", job))
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep((sleep or {}).get(job, 0.02))
        with lock:
            events.append(("end", job))
            live[0] -= 1
        if job in (fail or set()):
            raise RuntimeError(f"{job} broke")
        return job.upper()

    return work, events, peak


def test_one_worker_is_the_sequential_order():
    work, events, peak = _recorder()
    out = run_in_order(["a", "b", "c"], {"a": {"c"}}, work, workers=1)
    # a needs c, so c goes first; then the list's order
    assert [j for e, j in events if e == "start"] == ["b", "c", "a"]
    assert out == {"a": "A", "b": "B", "c": "C"} and peak[0] == 1


def test_two_workers_overlap_but_never_before_a_need():
    work, events, peak = _recorder(sleep={"codec_a": 0.15, "codec_e": 0.05})
    jobs = ["codec_a", "codec_e", "other", "te", "live"]
    needs = {"te": {"codec_a", "codec_e"}, "live": {"te", "outside_the_list"}}
    seen = []
    out = run_in_order(jobs, needs, work, workers=2, done=lambda j, r: seen.append((j, r)))
    pos = {(e, j): i for i, (e, j) in enumerate(events)}
    assert pos[("start", "te")] > max(pos[("end", "codec_a")], pos[("end", "codec_e")])
    assert pos[("start", "live")] > pos[("end", "te")]
    assert peak[0] == 2  # the codecs ran side by side
    assert pos[("start", "other")] < pos[("end", "codec_a")]  # a free worker took it
    assert sorted(seen) == sorted((j, j.upper()) for j in jobs) and set(out) == set(jobs)


def test_two_workers_start_the_longest_chain_first():
    """The chain codec -> te -> live is listed last; side by side its head goes first, so its
    tail does not run alone at the end (the smoke book's live record once did, 50 s)."""
    work, events, _ = _recorder(sleep={j: 0.05 for j in ("x1", "x2", "x3", "x4")})
    jobs = ["x1", "x2", "x3", "x4", "codec", "te", "live"]
    run_in_order(jobs, {"te": {"codec"}, "live": {"te"}}, work, workers=2)
    starts = [j for e, j in events if e == "start"]
    assert starts[0] == "codec", starts
    pos = {(e, j): i for i, (e, j) in enumerate(events)}
    assert pos[("start", "live")] < pos[("end", "x4")], starts  # the chain ended beside the rest
    work, events, _ = _recorder()
    run_in_order(jobs, {"te": {"codec"}, "live": {"te"}}, work, workers=1)
    assert [j for e, j in events if e == "start"] == jobs  # one worker: the list's order


def test_a_failure_lets_the_rest_run_then_raises():
    work, events, _ = _recorder(fail={"b"})
    with pytest.raises(RuntimeError, match="b broke"):
        run_in_order(["a", "b", "c"], {"c": {"b"}}, work, workers=2)
    assert {j for e, j in events if e == "end"} == {"a", "b", "c"}


def test_a_cycle_is_refused_before_anything_runs():
    work, events, _ = _recorder()
    with pytest.raises(ValueError, match="cycle"):
        run_in_order(["a", "b", "c"], {"a": {"b"}, "b": {"a"}}, work, workers=2)
    assert events == []


def test_the_book_runs_wait_for_their_codecs_and_presets():
    from mlmlmlm.config import list_runs
    from mlmlmlm.runbook import run_needs

    runs = list_runs()
    needs = run_needs(runs, "smoke")
    assert needs["05_transformer/te2_frame"] == {"02_audio_codec/audio_codec",
                                                 "04_emg_codec/emg_codec"}
    assert needs["06_live_demo/te2_frame_ll"] == {"06_live_demo/audio_codec_ll",
                                                  "06_live_demo/emg_codec_ll"}
    assert {"05_transformer/te2_frame", "06_live_demo/te2_frame_ll"} <= needs["06_live_demo/live"]
    assert needs["02_audio_codec/a_vae"] == set()
    assert all(n in runs for ns in needs.values() for n in ns)
