"""The live record's presets: which trained translation run plays each. A section of the
``kind: live`` config (``experiments/06_live_demo/live.yaml``), so the runs the record is built
on are declared where it is configured, and their checkpoints enter its config hash like a
translation run's codecs (:func:`mlmlmlm.runbook.upstream_checkpoints`). Introduced in
06_live_demo.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PresetsConfig:
    """``<phase>/<run>`` of each preset's translation run (resolved beside the record's folder,
    at its scale and data)."""

    default: str = "05_transformer/te2_frame"  # the production codecs, frame layout
    low_latency: str = "06_live_demo/te2_frame_ll"  # hop 128 / 16
    # each preset's playout delay (ms): what its compute per Bela buffer and the transport's
    # jitter must fit in (see the engine's module doc)
    default_playout_ms: float = 80.0  # te2_frame on 2 cores (live.yaml says why)
    low_latency_playout_ms: float = 20.0

    def __post_init__(self) -> None:
        if min(self.default_playout_ms, self.low_latency_playout_ms) < 0:
            raise ValueError("a playout delay must be >= 0 ms")

    def runs(self) -> dict[str, str]:
        """``{preset label: run}`` in play order (the labels of chapter 6)."""
        return {"default": self.default, "low latency": self.low_latency}

    def playout_ms(self) -> dict[str, float]:
        """``{preset label: playout delay in ms}``."""
        return {"default": self.default_playout_ms, "low latency": self.low_latency_playout_ms}

    def playout_for(self, run: str | None) -> float | None:
        """The playout delay (ms) of the preset that ``run`` (``<phase>/<run>``) plays, or None
        when no preset plays it."""
        for label, name in self.runs().items():
            if run == name:
                return self.playout_ms()[label]
        return None

    def upstream_runs(self) -> list[str]:
        """The runs whose checkpoints the record is built on."""
        return list(self.runs().values())
