"""Load balance between ranks: splitting the samples, measuring the imbalance, planning
row transfers, and deciding when.

Plain numpy, no MPI: every rank calls these functions on the same allgathered numbers
and so takes the same decision without further communication.

Samples die unevenly (docs/challenge.md, Semantics: most die in the first 10-30 layers, a few
percent survive to the end), so ranks that started with equal shares end with unequal
ones. Between segments of layers the runner (:mod:`spdnn.distributed.mpi`) asks
:meth:`BalancePolicy.decide` whether moving surviving rows is worth it and, if so,
follows the :func:`transfer_plan`. Before any layer runs, :func:`rank_ranges` splits
the samples so that the survivors start out evenly spread (``layout='shuffled'``).

Vocabulary: ``counts[r]`` is the number of samples alive on rank r; the *imbalance*
is ``max / mean`` (1.0 is perfect; 2.0 means the busiest rank has twice the average
and the run takes twice as long as a balanced one would).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import OptionError

__all__ = ["Transfer", "Decision", "BalancePolicy", "imbalance", "balanced_targets", "transfer_plan",
           "apply_plan", "segment_ends", "partition", "rank_ranges", "owners", "LAYOUTS"]

#: Ways to split the samples over ranks (see :func:`rank_ranges`).
LAYOUTS = ("shuffled", "block")


@dataclass(frozen=True)
class Transfer:
    """Move ``rows`` surviving samples from rank ``source`` to rank ``dest`` (0-based ranks)."""

    source: int
    dest: int
    rows: int


def _counts(counts, name: str = "counts") -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise OptionError(f"{name}: expected a non-empty 1-D sequence, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.isfinite(c)) or np.any(c != np.round(c)):
            raise OptionError(f"{name}: expected integers, got {c!r}")
        c = c.astype(np.int64)
    if np.any(c < 0):
        raise OptionError(f"{name}: negative entries in {c.tolist()}")
    return c.astype(np.int64)


def imbalance(loads) -> float:
    """max(loads) / mean(loads); 1.0 when every load is zero.

    Parameters
    ----------
    loads : sequence of non-negative numbers (one per rank)
        Samples alive, or busy seconds.
    """
    x = np.asarray(loads, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise OptionError(f"loads: expected a non-empty 1-D sequence, got shape {x.shape}")
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        raise OptionError(f"loads: expected finite non-negative numbers, got {x.tolist()}")
    mean = x.mean()
    return 1.0 if mean == 0 else float(x.max() / mean)


def balanced_targets(counts) -> np.ndarray:
    """The per-rank counts after an ideal rebalance (int64, same total).

    Every rank gets ``total // P``; the ``total % P`` extra rows stay on the ranks that
    already hold the most (ties: the lower rank), which keeps the moved rows minimal.
    """
    c = _counts(counts)
    size = c.size
    total = int(c.sum())
    targets = np.full(size, total // size, dtype=np.int64)
    extra = total % size
    if extra:
        order = np.lexsort((np.arange(size), -c))  # largest count first, then lowest rank
        targets[order[:extra]] += 1
    return targets


def transfer_plan(counts) -> list[Transfer]:
    """A minimal plan that brings ``counts`` to :func:`balanced_targets`.

    Minimal in rows moved (exactly the total surplus over the targets), and in
    messages: at most ``P - 1`` transfers, from a two-pointer walk that fills the
    lowest-ranked deficit from the lowest-ranked surplus. No rank both sends and
    receives, and every rank's transfers appear in the list in the order it must
    perform them (so ranks that post blocking sends and receives in list order cannot
    deadlock: the first unfinished transfer always has both ends waiting for it).

    Parameters
    ----------
    counts : sequence of int (P,)

    Returns
    -------
    list of :class:`Transfer`, possibly empty.
    """
    c = _counts(counts)
    diff = c - balanced_targets(c)
    senders = [[int(r), int(d)] for r, d in enumerate(diff) if d > 0]
    receivers = [[int(r), int(-d)] for r, d in enumerate(diff) if d < 0]
    plan: list[Transfer] = []
    i = j = 0
    while i < len(senders) and j < len(receivers):
        rows = min(senders[i][1], receivers[j][1])
        plan.append(Transfer(source=senders[i][0], dest=receivers[j][0], rows=rows))
        senders[i][1] -= rows
        receivers[j][1] -= rows
        if senders[i][1] == 0:
            i += 1
        if receivers[j][1] == 0:
            j += 1
    return plan


def apply_plan(counts, plan: list[Transfer]) -> np.ndarray:
    """The counts after ``plan`` (int64); raises :class:`OptionError` if a rank would go negative."""
    c = _counts(counts).copy()
    for t in plan:
        if not (0 <= t.source < c.size and 0 <= t.dest < c.size) or t.rows < 0:
            raise OptionError(f"transfer {t}: ranks must be in 0..{c.size - 1} and rows >= 0")
        c[t.source] -= t.rows
        c[t.dest] += t.rows
        if c[t.source] < 0:
            raise OptionError(f"transfer {t}: rank {t.source} does not hold {t.rows} rows")
    return c


def partition(samples: int, size: int) -> np.ndarray:
    """Contiguous split of ``samples`` rows over ``size`` ranks.

    Returns
    -------
    bounds : int64 array (size + 1,)
        Rank r owns the 0-based rows ``bounds[r]:bounds[r+1]``; the first
        ``samples % size`` ranks get one row more.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise OptionError(f"samples={samples!r}: expected an integer >= 0")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise OptionError(f"size={size!r}: expected an integer >= 1")
    share, extra = divmod(int(samples), int(size))
    sizes = np.full(int(size), share, dtype=np.int64)
    sizes[:extra] += 1
    bounds = np.zeros(int(size) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    return bounds


def rank_ranges(samples: int, size: int, *, layout: str = "shuffled", chunk_rows: int = 8, seed: int = 0) -> list:
    """The row ranges each rank owns.

    Parameters
    ----------
    samples, size : int
    layout : {'shuffled', 'block'}
        'block': one contiguous range per rank (:func:`partition`), as the seed does.
        'shuffled': the rows cut into chunks of ``chunk_rows``, the chunks put in a
        seeded random order and dealt round robin. Survival is far from uniform along
        the sample order: on the generated 1024 x 120 set, samples with even 1-based
        ids survive twice as often as odd ones (1,215 against 597 of the 1,812) and survivors
        cluster, so contiguous blocks leave the busiest of 2 ranks with 13% more
        survivors than the mean (2.75x at 64 ranks) and any regular interleave with
        an even stride is worse. Shuffled chunks of 8 rows bring that to 2% (1.5x at
        64 ranks, close to a per-sample random split) while each rank still reads
        runs of 8 consecutive rows.
    chunk_rows : int
        Rows per chunk of the 'shuffled' layout.
    seed : int
        Seed of the chunk order (every rank must use the same).

    Returns
    -------
    list of length ``size``; item r is a list of (start, stop) 0-based half-open row
    ranges, ascending and not adjacent, which together with the other ranks' cover
    0..samples-1 once.
    Rank sizes differ by at most one row ('block') or one chunk ('shuffled').
    """
    if layout not in LAYOUTS:
        raise OptionError(f"layout={layout!r}: expected one of {LAYOUTS}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise OptionError(f"chunk_rows={chunk_rows!r}: expected an integer >= 1")
    bounds = partition(samples, size)   # validates samples and size
    size = int(size)
    if layout == "block":
        return [[(int(bounds[r]), int(bounds[r + 1]))] if bounds[r + 1] > bounds[r] else [] for r in range(size)]
    chunks = -(-int(samples) // int(chunk_rows))
    order = np.random.default_rng(seed).permutation(chunks)
    owner = np.empty(chunks, dtype=np.int64)
    owner[order] = np.arange(chunks) % size
    out: list = [[] for _ in range(size)]
    for j in range(chunks):
        a, b = j * int(chunk_rows), min((j + 1) * int(chunk_rows), int(samples))
        mine = out[int(owner[j])]
        if mine and mine[-1][1] == a:      # adjacent chunks of one rank: one range
            mine[-1] = (mine[-1][0], b)
        else:
            mine.append((a, b))
    return out


def owners(samples: int, size: int, **layout) -> np.ndarray:
    """int64 array (samples,): the rank owning each 0-based row under :func:`rank_ranges`."""
    own = np.empty(int(samples), dtype=np.int64)
    for rank, ranges in enumerate(rank_ranges(samples, size, **layout)):
        for a, b in ranges:
            own[a:b] = rank
    return own


def segment_ends(depth: int, *, first: int = 2, factor: int = 2) -> list[int]:
    """Default segment schedule: ends at layers first, first*factor, ... and ``depth``.

    Most samples die in the first 10-30 layers, so the balance is checked often early
    and then at doubling distances (11 checks for 1920 layers). The runner also stops
    checking once the survivors stop falling (see :class:`BalancePolicy`).

    Returns
    -------
    list of int
        Strictly increasing exclusive segment ends (0-based layer counts), the last one
        ``depth``: segment i runs layers ``ends[i-1]..ends[i]-1`` (``ends[-1]`` = 0).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise OptionError(f"depth={depth!r}: expected an integer >= 1")
    if first < 1 or factor < 2:
        raise OptionError(f"first={first}, factor={factor}: expected first >= 1 and factor >= 2")
    ends = []
    k = int(first)
    while k < depth:
        ends.append(k)
        k *= int(factor)
    ends.append(int(depth))
    return ends


@dataclass(frozen=True)
class Decision:
    """What :meth:`BalancePolicy.decide` concluded at one segment boundary."""

    rebalance: bool
    reason: str
    plan: list = field(default_factory=list)
    imbalance: float = 1.0
    gain_seconds: float = 0.0
    cost_seconds: float = 0.0


@dataclass(frozen=True)
class BalancePolicy:
    """When to rebalance surviving samples between ranks.

    A rebalance happens at a segment boundary when all of these hold:

    1. the count imbalance ``max/mean`` exceeds ``threshold``;
    2. the plan moves at least ``min_rows`` rows;
    3. the predicted gain exceeds the predicted cost. Gain: the busiest rank's excess
       rows times the remaining layers times the measured seconds per row and layer
       (from the segment just run, all ranks together). Cost: the busiest rank's rows
       times the seconds to take one row out of the engine and load it back
       (``activations()`` + exchange + ``load()``); measured at each rebalance, and
       guessed before the first one as ``reload_cost_layers`` layers of compute.
       Skipped when ``cost_aware`` is False (or while no timing is known yet).

    Parameters
    ----------
    threshold : float
        Imbalance above which rebalancing is considered (>= 1).
    min_rows : int
        Smallest transfer worth the round trip.
    reload_cost_layers : float
        Initial guess of a row's round trip, in layers of compute of that row (the
        runner replaces it by the measured cost after the first rebalance).
        ``run_distributed(balance=True)`` sets it per engine
        (:data:`spdnn.distributed.mpi.RELOAD_COST_GUESS`).
    cost_aware : bool
        False: rebalance whenever 1 and 2 hold (test 3 is skipped), e.g. to measure
        what rebalancing costs.
    settle : float
        When the global survivor count fell by less than this fraction over a
        segment and no rebalance was needed, the remaining layers run as one segment.
    """

    threshold: float = 1.05
    min_rows: int = 1
    reload_cost_layers: float = 2.0
    cost_aware: bool = True
    settle: float = 0.01

    def __post_init__(self):
        if not (np.isfinite(self.threshold) and self.threshold >= 1.0):
            raise OptionError(f"BalancePolicy.threshold={self.threshold}: expected a number >= 1")
        if self.min_rows < 1:
            raise OptionError(f"BalancePolicy.min_rows={self.min_rows}: expected >= 1")
        if not (np.isfinite(self.reload_cost_layers) and self.reload_cost_layers >= 0):
            raise OptionError(f"BalancePolicy.reload_cost_layers={self.reload_cost_layers}: expected >= 0")
        if not 0 <= self.settle < 1:
            raise OptionError(f"BalancePolicy.settle={self.settle}: expected 0 <= settle < 1")

    def decide(self, counts, *, remaining_layers: int, seconds_per_row_layer: float | None = None,
               reload_seconds_per_row: float | None = None) -> Decision:
        """Decide at one boundary.

        Parameters
        ----------
        counts : sequence of int (P,)
            Samples alive on each rank now.
        remaining_layers : int
            Layers still to run.
        seconds_per_row_layer : float, optional
            Measured compute seconds per alive row and layer; None or 0: unknown (the
            cost test is skipped).
        reload_seconds_per_row : float, optional
            Measured round-trip seconds per row of the busiest rank; None: guess it as
            ``reload_cost_layers * seconds_per_row_layer``.
        """
        c = _counts(counts)
        imb = imbalance(c)
        if remaining_layers <= 0:
            return Decision(False, "no layers left", imbalance=imb)
        if imb <= self.threshold:
            return Decision(False, f"imbalance {imb:.3f} <= threshold {self.threshold}", imbalance=imb)
        plan = transfer_plan(c)
        moved = sum(t.rows for t in plan)
        if moved < self.min_rows:
            return Decision(False, f"would move {moved} rows < min_rows {self.min_rows}", imbalance=imb)
        excess = int(c.max() - balanced_targets(c).max())
        gain = cost = 0.0
        if seconds_per_row_layer and self.cost_aware:
            gain = excess * remaining_layers * seconds_per_row_layer
            per_row = (self.reload_cost_layers * seconds_per_row_layer if reload_seconds_per_row is None
                       else reload_seconds_per_row)
            cost = int(c.max()) * per_row
            if cost >= gain:
                return Decision(False, f"predicted gain {gain:.3g} s <= cost {cost:.3g} s", imbalance=imb,
                                gain_seconds=gain, cost_seconds=cost)
        return Decision(True, f"imbalance {imb:.3f}: moving {moved} rows in {len(plan)} transfer(s)", plan=plan,
                        imbalance=imb, gain_seconds=gain, cost_seconds=cost)
