"""The key/value cache of one attention layer for incremental decoding: growing storage, or a
ring of fixed slots for a compiled generation step.

Introduced with the translation Transformer (notebook 05_transformer); used by
:mod:`mlmlmlm.models.generation` and :class:`mlmlmlm.nn.attention.SelfAttention`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVBuffer:
    """Keys and values of one attention layer for a contiguous run of positions.

    Entries are appended in position order and forgotten from the front (``drop_before``), so the
    live positions are always ``start .. end - 1``.

    Two storages. Without ``capacity`` it grows: when it runs out, the live entries move to the
    front (or into storage twice their size), O(1) per appended entry amortised, memory at most
    ~4x the live entries; ``span`` returns views. With ``capacity`` C it is a **ring** of C fixed
    slots: position p lives in slot p mod C, nothing moves or grows, and :meth:`ring` hands the
    whole storage and each slot's position to a one-position step that masks by position, so
    its tensors keep one shape for the whole stream (what a compiled step needs); ``span``
    gathers copies in position order. Appending past C live entries raises.
    """

    EMPTY = -(1 << 62)  # the position of a ring slot never written: older than any window

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"a ring needs capacity >= 1, got {capacity}")
        self.ring_capacity = capacity
        self._k: Tensor | None = None  # [B, H, capacity, hd]
        self._v: Tensor | None = None
        self._pos: Tensor | None = None  # ring: [capacity] long, the position in each slot
        self._lo = self._hi = 0  # live storage slots [lo, hi) (growing storage)
        self._n = 0  # live entries (ring)
        self.start = 0  # absolute position of the oldest live entry

    def __len__(self) -> int:
        return self._n if self.ring_capacity else self._hi - self._lo

    @property
    def end(self) -> int:
        """One past the newest live position."""
        return self.start + len(self)

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else self._k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> None:
        """Append ``k``, ``v`` [B, H, n, hd] at positions ``end .. end + n - 1``."""
        if self.ring_capacity:
            return self._ring_append(k, v)
        n = k.shape[2]
        if self._hi + n > self.capacity:
            live, need = len(self), len(self) + n
            if 2 * need > self.capacity:  # grow: fresh storage, twice what is needed
                shape = (k.shape[0], k.shape[1], max(2 * need, 16), k.shape[3])
                new_k, new_v = k.new_empty(shape), v.new_empty(shape)
            else:  # compact in place: live entries to the front
                new_k, new_v = self._k, self._v
            if live:
                new_k[:, :, :live] = self._k[:, :, self._lo:self._hi].clone()
                new_v[:, :, :live] = self._v[:, :, self._lo:self._hi].clone()
            self._k, self._v, self._lo, self._hi = new_k, new_v, 0, live
        self._k[:, :, self._hi:self._hi + n] = k
        self._v[:, :, self._hi:self._hi + n] = v
        self._hi += n

    def _ring_append(self, k: Tensor, v: Tensor) -> None:
        C, n = self.ring_capacity, k.shape[2]
        if self._n + n > C:
            raise ValueError(f"a ring of {C} slots holds {self._n} live entries and cannot take "
                             f"{n} more: forget older ones first, or append in smaller pieces")
        if self._k is None:
            self.reserve(k.shape[0], k.shape[1], k.shape[3], k.dtype, k.device)
        pos = torch.arange(self.end, self.end + n, device=k.device)
        write_ring(self.ring(), pos % C, k, v, pos)
        self._n += n

    def claim(self, n: int = 1) -> int:
        """A ring's next ``n`` entries, positions ``end .. end + n - 1``, to be written in place
        by the caller (a compiled step writes its keys, values and positions into the storage of
        :meth:`ring` at slots ``position % capacity``): counted here, before the write, which
        raises where :meth:`append` would. Returns the first position."""
        if not self.ring_capacity or self._k is None:
            raise ValueError("claim() needs a ring buffer with reserved slots")
        if self._n + n > self.ring_capacity:
            raise ValueError(f"a ring of {self.ring_capacity} slots holds {self._n} live entries "
                             f"and cannot take {n} more: forget older ones first")
        first = self.end
        self._n += n
        return first

    def reserve(self, rows: int, heads: int, head_dim: int, dtype: torch.dtype,
                device: torch.device) -> None:
        """Allocate a ring's slots now (zeros, not garbage: a masked slot still enters the
        products), so :meth:`ring` works before the first append."""
        if not self.ring_capacity:
            raise ValueError("reserve() is for ring buffers")
        shape = (rows, heads, self.ring_capacity, head_dim)
        self._k = torch.zeros(shape, dtype=dtype, device=device)
        self._v = torch.zeros(shape, dtype=dtype, device=device)
        self._pos = torch.full((self.ring_capacity,), self.EMPTY, dtype=torch.long, device=device)

    def drop_before(self, pos: int) -> None:
        """Forget the entries at positions < ``pos``."""
        d = min(max(pos - self.start, 0), len(self))
        if self.ring_capacity:
            self._n -= d
        else:
            self._lo += d
        self.start += d

    def span(self, p0: int, p1: int) -> tuple[Tensor, Tensor, int]:
        """The live entries at positions [p0, p1) (clipped): k, v [B, H, n, hd], first position
        (views of growing storage; copies, in position order, from a ring)."""
        p0 = max(p0, self.start)
        p1 = max(min(p1, self.end), p0)
        if self.ring_capacity:
            if self._k is None:
                raise ValueError("span of an empty ring")
            slots = torch.arange(p0, p1, device=self._k.device) % self.ring_capacity
            return self._k.index_select(2, slots), self._v.index_select(2, slots), p0
        a, b = self._lo + p0 - self.start, self._lo + p1 - self.start
        return self._k[:, :, a:b], self._v[:, :, a:b], p0

    def ring(self) -> tuple[Tensor, Tensor, Tensor]:
        """A ring's whole storage: k, v [B, H, C, hd] and each slot's position [C] (``EMPTY``
        where never written; entries before ``start`` are stale and must be masked out)."""
        if not self.ring_capacity or self._k is None:
            raise ValueError("ring() needs a ring buffer with entries")
        return self._k, self._v, self._pos


def write_ring(ring: tuple[Tensor, Tensor, Tensor], slots: Tensor, k: Tensor, v: Tensor,
               pos: Tensor) -> None:
    """Entries k, v [B, H, n, hd] at positions ``pos`` [n] into a ring's storage (``ring()``:
    k, v [B, H, C, hd], positions [C]) at ``slots`` [n], in place: :meth:`KVBuffer.append`, and
    a compiled step that writes its own entries after :meth:`KVBuffer.claim`."""
    ring[0].index_copy_(2, slots, k)
    ring[1].index_copy_(2, slots, v)
    ring[2].index_copy_(0, slots, pos)
