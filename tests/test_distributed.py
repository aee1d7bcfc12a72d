"""spdnn.distributed: transfer plans and policy (plain numpy), feature sources, and MPI runs.

The MPI tests launch ``mpiexec -n P python tests/_mpi_worker.py`` (with a timeout, one
numba thread per rank) and check that P ranks give exactly the 1-rank categories and
survivors, with balancing off, on and forced, and both layouts (shuffled, block).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from spdnn.distributed import (BalancePolicy, CsrSource, HeadSource, NpzSource, Transfer, apply_plan, as_source,
                               balanced_targets, imbalance, owners, partition, rank_ranges, run_distributed,
                               save_npz_source, segment_ends, transfer_plan)
from spdnn.engines import get_engine
from spdnn.engines.reference import ReferenceEngine
from spdnn.errors import DeviceMemoryError, FormatError, OptionError
from spdnn.network import Network

from _mpi_worker import save_network
from factories import (engine_availability, feedforward_network, general_cases, random_features, random_network,
                       read_official_subset)

WORKER = Path(__file__).with_name("_mpi_worker.py")
MPI_TIMEOUT = 300


# ------------------------------------------------------------------- balance (no MPI)


def test_imbalance():
    assert imbalance([3, 3, 3]) == 1.0
    assert imbalance([0, 0]) == 1.0
    assert imbalance([4, 0]) == 2.0
    assert imbalance([1.5, 0.5]) == 1.5
    with pytest.raises(OptionError, match="non-negative"):
        imbalance([1, -1])
    with pytest.raises(OptionError, match="1-D"):
        imbalance([])


def test_balanced_targets_keeps_remainder_on_the_largest():
    t = balanced_targets([1, 9, 5, 0])       # total 15 over 4: 3 each, 3 extra
    assert t.sum() == 15 and t.max() - t.min() <= 1
    assert t.tolist() == [4, 4, 4, 3]      # the extras stay on ranks 1, 2, 0 (the largest)
    assert balanced_targets([5, 5]).tolist() == [5, 5]
    with pytest.raises(OptionError, match="negative"):
        balanced_targets([1, -2])
    with pytest.raises(OptionError, match="integers"):
        balanced_targets([1.5, 2])


def test_transfer_plan_properties(rng):
    for _ in range(300):
        size = int(rng.integers(1, 12))
        counts = rng.integers(0, 50, size=size) * rng.integers(0, 2, size=size) + rng.integers(0, 3, size=size)
        plan = transfer_plan(counts)
        after = apply_plan(counts, plan)
        targets = balanced_targets(counts)
        assert after.tolist() == targets.tolist()
        assert after.sum() == counts.sum() and after.max() - after.min() <= 1
        # minimal: exactly the surplus over the targets moves, in at most P - 1 messages
        assert sum(t.rows for t in plan) == int(np.maximum(counts - targets, 0).sum())
        assert len(plan) <= max(size - 1, 0)
        assert all(t.rows > 0 and t.source != t.dest for t in plan)
        senders, receivers = {t.source for t in plan}, {t.dest for t in plan}
        assert not senders & receivers


def test_transfer_plan_examples():
    assert transfer_plan([4, 4, 4]) == []
    assert transfer_plan([10, 0]) == [Transfer(0, 1, 5)]
    assert transfer_plan([0, 9, 0]) == [Transfer(1, 0, 3), Transfer(1, 2, 3)]
    with pytest.raises(OptionError, match="does not hold"):
        apply_plan([1, 0], [Transfer(0, 1, 2)])
    with pytest.raises(OptionError, match="ranks must be"):
        apply_plan([1, 0], [Transfer(0, 5, 1)])


def test_partition():
    b = partition(10, 3)
    assert b.tolist() == [0, 4, 7, 10]
    assert partition(2, 4).tolist() == [0, 1, 2, 2, 2]
    assert partition(0, 2).tolist() == [0, 0, 0]
    with pytest.raises(OptionError, match="size"):
        partition(10, 0)
    with pytest.raises(OptionError, match="samples"):
        partition(-1, 2)


def test_rank_ranges_cover_every_row_once():
    for samples, size, layout, chunks in [(10, 3, "block", 16), (10, 2, "shuffled", 2), (1000, 7, "shuffled", 8),
                                          (5, 8, "shuffled", 1), (0, 2, "block", 1), (0, 2, "shuffled", 8)]:
        ranges = rank_ranges(samples, size, layout=layout, chunk_rows=chunks)
        assert len(ranges) == size
        rows = np.concatenate([np.arange(a, b) for r in ranges for a, b in r] or [np.zeros(0, int)])
        assert sorted(rows.tolist()) == list(range(samples))
        sizes = [sum(b - a for a, b in r) for r in ranges]
        assert max(sizes) - min(sizes) <= (1 if layout == "block" else chunks)
        assert all(r == sorted(r) for r in ranges)
        own = owners(samples, size, layout=layout, chunk_rows=chunks)
        assert [int((own == k).sum()) for k in range(size)] == sizes
        if layout == "shuffled":
            assert all(a % chunks == 0 and (b % chunks == 0 or b == samples) for r in ranges for a, b in r)
            assert all(x[1] < y[0] for r in ranges for x, y in zip(r, r[1:]))     # adjacent ranges merged
            assert ranges == rank_ranges(samples, size, layout=layout, chunk_rows=chunks)   # same on every rank
    assert rank_ranges(10, 3, layout="block") == [[(0, 4)], [(4, 7)], [(7, 10)]]
    assert rank_ranges(100, 1, layout="shuffled") == [[(0, 100)]]
    # a parity pattern (odd rows "survive", as in the challenge inputs) is spread evenly by shuffled chunks
    odd = np.arange(1, 6000, 2)
    by_rank = np.bincount(owners(6000, 2, layout="shuffled")[odd], minlength=2)
    assert abs(int(by_rank[0]) - int(by_rank[1])) <= 4 * 8
    with pytest.raises(OptionError, match="layout"):
        rank_ranges(10, 2, layout="random")
    with pytest.raises(OptionError, match="chunk_rows"):
        rank_ranges(10, 2, chunk_rows=0)


def test_segment_ends():
    assert segment_ends(120) == [2, 4, 8, 16, 32, 64, 120]
    assert segment_ends(1920)[-2:] == [1024, 1920]
    assert segment_ends(2) == [2]
    assert segment_ends(1) == [1]
    assert segment_ends(20, first=5, factor=3) == [5, 15, 20]
    with pytest.raises(OptionError, match="depth"):
        segment_ends(0)


def test_policy_decisions():
    policy = BalancePolicy(threshold=1.1, min_rows=2, reload_cost_layers=2.0)
    keep = policy.decide([100, 104], remaining_layers=50, seconds_per_row_layer=1e-6)
    assert not keep.rebalance and "threshold" in keep.reason
    go = policy.decide([100, 300], remaining_layers=50, seconds_per_row_layer=1e-6)
    assert go.rebalance and go.plan == [Transfer(1, 0, 100)]
    assert go.gain_seconds == pytest.approx(100 * 50 * 1e-6) and go.cost_seconds == pytest.approx(300 * 2e-6)
    # the same imbalance near the end does not pay for the round trip
    late = policy.decide([100, 300], remaining_layers=3, seconds_per_row_layer=1e-6)
    assert not late.rebalance and "cost" in late.reason
    # a measured round trip replaces the guess
    slow = policy.decide([100, 300], remaining_layers=50, seconds_per_row_layer=1e-6, reload_seconds_per_row=1e-3)
    assert not slow.rebalance
    assert not policy.decide([0, 3], remaining_layers=50).rebalance          # moves 1 row < min_rows
    assert policy.decide([0, 4], remaining_layers=50).rebalance              # timing unknown: no cost test
    assert not policy.decide([0, 400], remaining_layers=0).rebalance
    eager = BalancePolicy(threshold=1.0, cost_aware=False)
    assert eager.decide([100, 101, 99], remaining_layers=1, seconds_per_row_layer=1.0,
                        reload_seconds_per_row=1e6).plan == [Transfer(1, 2, 1)]
    for bad in ({"threshold": 0.5}, {"min_rows": 0}, {"reload_cost_layers": -1}, {"settle": 1.0}):
        with pytest.raises(OptionError, match="BalancePolicy"):
            BalancePolicy(**bad)


# --------------------------------------------------------------------- feature sources


def _features(rng, samples, neurons, density=0.2, *, dead=()):
    return random_features(rng, samples, neurons, density, values=(0.5, 2.0), dead=dead)


@pytest.mark.parametrize("values", [True, False])
def test_npz_source_reads_row_ranges(tmp_path, rng, values):
    m = _features(rng, 37, 16)
    path = save_npz_source(tmp_path / "f.npz", m, values=values)
    src = NpzSource(path)
    assert (src.samples, src.neurons) == (37, 16)
    expect = m if values else (m != 0).astype(np.float64)
    for start, stop in [(0, 37), (0, 0), (5, 9), (36, 37)]:
        got = src.rows(start, stop)
        assert got.shape == (stop - start, 16)
        assert (got != expect[start:stop]).nnz == 0
    assert isinstance(src._indices, np.memmap)   # uncompressed members are mapped, not read
    ranges = [(30, 37), (0, 3), (5, 5), (8, 16)]
    stacked = sp.vstack([expect[a:b] for a, b in ranges], format="csr")
    assert (src.take(ranges) != stacked).nnz == 0 and src.take(ranges).shape == stacked.shape
    assert (CsrSource(expect).take(ranges) != stacked).nnz == 0
    assert src.take([]).shape == (0, 16)
    head = HeadSource(src, 20)
    assert head.samples == 20 and (head.take([(0, 3), (10, 20)]) != sp.vstack([expect[0:3], expect[10:20]])).nnz == 0
    with pytest.raises(OptionError, match="rows"):
        head.rows(0, 21)
    with pytest.raises(OptionError, match="samples"):
        HeadSource(src, 38)
    with pytest.raises(OptionError, match="rows"):
        src.rows(3, 38)


def test_npz_source_compressed_and_cache_layout(tmp_path, rng):
    m = _features(rng, 12, 8)
    # the generated-features cache layout: pattern only, compressed here
    np.savez_compressed(tmp_path / "c.npz", indptr=m.indptr, indices=m.indices, shape=np.array(m.shape))
    got = NpzSource(tmp_path / "c.npz").rows(2, 7)
    assert (got != (m[2:7] != 0).astype(np.float64)).nnz == 0


def test_npz_source_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="bad.npz"):
        NpzSource(bad)
    np.savez(tmp_path / "partial.npz", indptr=np.array([0, 1]), shape=np.array([1, 4]))
    with pytest.raises(FormatError, match="indices"):
        NpzSource(tmp_path / "partial.npz")
    np.savez(tmp_path / "wrong.npz", indptr=np.array([0, 1, 5]), indices=np.array([0]), shape=np.array([2, 4]))
    with pytest.raises(FormatError, match="2 rows"):
        NpzSource(tmp_path / "wrong.npz")


def test_as_source(rng):
    m = _features(rng, 5, 4)
    assert isinstance(as_source(m, 4), CsrSource)
    assert isinstance(as_source(m.toarray()), CsrSource)
    with pytest.raises(OptionError, match="expected 8"):
        as_source(m, 8)
    with pytest.raises(OptionError, match="FeatureSource"):
        as_source([[1, 2]])


def test_world_plain_run_does_not_start_mpi():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "PMIX", "OMPI", "MPI_", "MV2", "I_MPI"))}
    code = ("import sys; from spdnn.distributed import world; w = world(); "
            "print(w.size, w.rank, w.comm is None, 'mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0", "True", "False"]


# ------------------------------------------------------------ one process (no launcher)


def _engines() -> list[str]:
    return [name for name in ("reference", "cpu") if engine_availability(name)[0]]


def _random_case(rng, *, neurons=48, depth=20, samples=160, skew=True) -> tuple[Network, sp.csr_matrix]:
    """A random network whose first half of samples dies early when ``skew`` (forces imbalance)."""
    net = random_network(rng, neurons, depth, density=0.15, values=(0.05, 0.45),
                         bias=rng.uniform(-0.4, -0.1, size=neurons))
    feats = _features(rng, samples, neurons, density=0.3)
    if skew:
        half = samples // 2
        sparse_half = _features(rng, half, neurons, density=0.03, dead=[3])   # sample 4 dead from the start
        feats = sp.vstack([sparse_half, feats[half:]], format="csr")
    return net, feats


@pytest.mark.parametrize("engine", ["reference", "cpu"])
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_single_process_segments_match_engine(rng, engine, precision):
    if engine not in _engines():
        pytest.skip(f"engine {engine!r} not available: {engine_availability(engine)[1]}")
    net, feats = _random_case(rng)
    ref = get_engine(engine, precision=precision).run(net, feats)
    assert len(ref.categories) > 0
    for balance, segments in [(False, None), (True, None), (True, [1, 2, 5, 11, 19]), (False, [7])]:
        got = run_distributed(net, feats, engine=engine, precision=precision, balance=balance,
                              segment_layers=segments)
        assert got.categories.tolist() == ref.categories.tolist()
        assert got.survivors.tolist() == ref.survivors.tolist()
        assert got.extra["ranks"] == 1 and got.samples == feats.shape[0] and got.edges == net.edges
        spans = [(s["start"], s["stop"]) for s in got.extra["segments"]]
        assert spans[0][0] == 0 and spans[-1][1] == net.depth
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        if segments is not None:
            assert [s for _, s in spans] == segments + [net.depth]


def test_single_process_accepts_prepared_engine_and_source(rng, tmp_path):
    net, feats = _random_case(rng, skew=False)
    ref = get_engine("reference", precision="fp32").run(net, feats)
    eng = get_engine("reference", precision="fp32")
    eng.prepare(net)
    src = NpzSource(save_npz_source(tmp_path / "f.npz", feats))
    got = run_distributed(net, src, engine=eng)
    assert got.categories.tolist() == ref.categories.tolist()
    with pytest.raises(OptionError, match="balance"):
        run_distributed(net, feats, engine="reference", balance="yes")
    with pytest.raises(OptionError, match="segment_layers"):
        run_distributed(net, feats, engine="reference", segment_layers=[0, 5])


def _same_outputs(got, want, label="") -> None:
    """The outputs, predictions and top-k of two results (or a dict of arrays) are equal, bit for bit."""
    for name in ("outputs", "predictions", "top_indices", "top_values"):
        a = got.get(name) if isinstance(got, dict) else getattr(got, name)
        b = getattr(want, name)
        assert (a is None) == (b is None), f"{label}: {name}"
        if b is not None:
            assert a.shape == b.shape and a.dtype == b.dtype, f"{label}: {name} {a.shape} {b.shape}"
            assert np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)), \
                f"{label}: {name} differ"


@pytest.mark.parametrize("engine", ["reference", "cpu"])
@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_single_process_general_network_outputs(rng, engine, precision):
    """A general network's outputs come back in sample order, as the engine's own run gives them."""
    if engine not in _engines():
        pytest.skip(f"engine {engine!r} not available: {engine_availability(engine)[1]}")
    cases = general_cases(rng)
    net = feedforward_network(rng, widths=[12, 30, 20, 7])
    cases["random"] = (net, random_features(rng, 70, 12, 0.3, dead=[2, 5]))
    for name, (net, feats) in cases.items():
        for outputs, top_k in [("activations", None), ("predictions", None), ("topk", 3)]:
            want = get_engine(engine, precision=precision).run(net, feats, outputs=outputs, top_k=top_k)
            for balance, segments in [(False, None), (True, [1])]:
                got = run_distributed(net, feats, engine=engine, precision=precision, balance=balance,
                                      segment_layers=segments if net.depth > 1 else None, outputs=outputs,
                                      top_k=top_k)
                label = f"{name} {outputs} balance={balance}"
                assert got.categories.tolist() == want.categories.tolist(), label
                assert got.survivors.tolist() == want.survivors.tolist(), label
                assert got.neurons == net.inputs
                _same_outputs(got, want, label)


def test_distributed_refuses_outputs_that_cannot_fit(monkeypatch, rng):
    from spdnn import memory
    from spdnn.errors import MemoryLimitError

    net, feats = general_cases(rng)["revive"]
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 100)
    with pytest.raises(MemoryLimitError, match="outputs='activations'.*on rank 0"):
        run_distributed(net, feats, engine="reference", outputs="activations")


class _SmallDeviceEngine(ReferenceEngine):
    """A reference engine whose 'device' holds at most ``cap`` samples; run() batches."""

    name = "reference"

    def __init__(self, cap: int, **options):
        super().__init__(**options)
        self.cap = cap
        self.batches = 0

    def load(self, features) -> None:
        if features.shape[0] > self.cap:
            raise DeviceMemoryError(f"{features.shape[0]} samples > cap {self.cap}")
        super().load(features)

    def run(self, network, features):
        self.prepare(network)
        cats, survivors = [], np.zeros(network.depth, dtype=np.int64)
        for b0 in range(0, features.shape[0], self.cap):
            self.load(features[b0:b0 + self.cap])
            c, s, _ = self.infer()
            cats.append(c + b0)
            survivors += s
            self.batches += 1
        self.features = features
        return self._result(np.concatenate(cats), survivors, {"batches": self.batches}, inference=0.01,
                            preprocess=0.0)


def test_single_process_batches_when_the_share_does_not_fit(rng):
    net, feats = _random_case(rng)
    ref = get_engine("reference", precision="fp32").run(net, feats)
    eng = _SmallDeviceEngine(50, precision="fp32")
    eng.prepare(net)
    got = run_distributed(net, feats, engine=eng, balance=True)
    assert got.extra["batched"] and eng.batches == -(-feats.shape[0] // 50)
    assert got.categories.tolist() == ref.categories.tolist()
    assert got.survivors.tolist() == ref.survivors.tolist()
    assert got.extra["boundaries"] == [] and len(got.extra["segments"]) == 1


# ------------------------------------------------------------------------ under mpiexec


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _launch(case_dir: Path, runs: list[dict], ranks: int) -> list[dict]:
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("needs MPI: no mpiexec beside sys.executable or on PATH")
    runs_file, out_file = case_dir / "runs.json", case_dir / f"out-{ranks}.json"
    runs_file.write_text(json.dumps(runs))
    out_file.unlink(missing_ok=True)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, str(WORKER), str(case_dir), str(runs_file), str(out_file)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=MPI_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish in {MPI_TIMEOUT} s")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out_file.read_text())


def _write_case(case_dir: Path, net: Network, feats) -> Path:
    case_dir.mkdir(parents=True, exist_ok=True)
    save_network(case_dir / "network.npz", net)
    save_npz_source(case_dir / "features.npz", feats)
    return case_dir


def _check_against_one_rank(results, net, feats, ranks, truth=None):
    """Every run equals the 1-rank run of its engine and precision (and the truth if given)."""
    for item in results:
        run, got = item["run"], item["result"]
        ref = get_engine(run["engine"], precision=run["precision"]).run(net, feats)
        label = f"{run} on {ranks} ranks"
        assert item["size"] == ranks and got["extra"]["ranks"] == ranks, label
        assert got["categories"] == ref.categories.tolist(), label
        assert got["survivors"] == ref.survivors.tolist(), label
        if truth is not None:
            assert got["categories"] == truth.tolist(), label
        extra = got["extra"]
        assert sum(extra["rank_samples"]) == feats.shape[0]
        assert got["inference_seconds"] >= max(extra["rank_busy_seconds"])
        assert extra["imbalance"] >= 1.0
        if run["balance"] == "off":
            assert extra["rebalances"] == 0 and extra["bytes_moved"] == 0
        moved = [b for b in extra["boundaries"] if b["action"] == "rebalance"]
        assert extra["rebalances"] == len(moved) and all(len(b["counts"]) == ranks for b in moved), label
        assert (extra["rows_moved"] > 0) == (len(moved) > 0), label
        if run["balance"] == "force":
            # any boundary where a row can move (counts differ by 2 or more) is acted on
            assert all(b["action"] == "rebalance" for b in extra["boundaries"]
                       if max(b["counts"]) - min(b["counts"]) >= 2), label
        if run["balance"] == "force" and run.get("layout") == "block":
            # the skewed contiguous split of every case here is unbalanced somewhere
            assert extra["rebalances"] >= 1 and extra["bytes_moved"] > 0, label


def _runs(engine: str, precisions=("fp32",)) -> list[dict]:
    modes = [("off", "shuffled"), ("on", "shuffled"), ("force", "shuffled"), ("off", "block"), ("on", "block"),
             ("force", "block")]
    return [{"engine": engine, "precision": p, "balance": b, "layout": layout}
            for p in precisions for b, layout in modes]


@pytest.mark.mpi
@pytest.mark.parametrize("engine", ["reference", "cpu"])
def test_mpi_two_ranks_random_network(tmp_path, rng, engine):
    if engine not in _engines():
        pytest.skip(f"engine {engine!r} not available: {engine_availability(engine)[1]}")
    net, feats = _random_case(rng)
    case = _write_case(tmp_path / "case", net, feats)
    results = _launch(case, _runs(engine, ("fp32", "fp64")), 2)
    _check_against_one_rank(results, net, feats, 2)
    # the skewed contiguous split (rank 0 holds the samples that die early) must trigger the default policy
    on = [r["result"]["extra"] for r in results if r["run"]["balance"] == "on" and r["run"]["layout"] == "block"]
    assert on and all(e["rebalances"] >= 1 for e in on), [e["boundaries"] for e in on]
    assert {r["result"]["extra"]["layout"] for r in results} == {"block", "shuffled"}


@pytest.mark.mpi
def test_mpi_rank_with_no_live_sample_receives_rows(tmp_path, rng):
    net, feats = _random_case(rng, samples=120, skew=False)
    feats = feats.tolil()
    feats[:60] = 0                       # with the block layout rank 0 holds only dead samples
    feats = feats.tocsr()
    case = _write_case(tmp_path / "case", net, feats)
    runs = [{"engine": "reference", "precision": "fp32", "balance": b, "layout": "block"} for b in ("off", "force")]
    results = _launch(case, runs, 2)
    _check_against_one_rank(results, net, feats, 2)
    forced = results[1]["result"]["extra"]
    assert forced["boundaries"][0]["counts"][0] == 0 and forced["boundaries"][0]["action"] == "rebalance"


@pytest.mark.mpi
def test_mpi_three_ranks_uneven_split(tmp_path, rng):
    net, feats = _random_case(rng, samples=131)
    case = _write_case(tmp_path / "case", net, feats)
    results = _launch(case, _runs("reference"), 3)
    _check_against_one_rank(results, net, feats, 3)


@pytest.mark.mpi
def test_mpi_two_ranks_official_subset(tmp_path, official_dir):
    net, feats, truth = read_official_subset(official_dir)
    assert feats.shape == (1200, 1024) and len(truth) == 19
    case = _write_case(tmp_path / "official", net, feats)
    engines = _engines()
    runs = [r for e in engines for r in _runs(e)]
    results = _launch(case, runs, 2)
    _check_against_one_rank(results, net, feats, 2, truth=truth)
    assert {r["run"]["engine"] for r in results} == set(engines)


@pytest.mark.mpi
@pytest.mark.parametrize("case", ["revive", "zero_rows_kept", "random"])
def test_mpi_two_ranks_general_network_outputs(tmp_path, rng, case):
    """Any network over 2 ranks: outputs stitched on rank 0 in sample order, equal bit for bit
    to one process's. 'revive': every row is zero after layer 1 and revived by layer 2's
    dense bias, so the rows a forced rebalance moves after layer 1 are zero rows that may
    not be dropped."""
    if case == "random":
        net = feedforward_network(rng, widths=[15, 33, 9, 21, 6])
        feats = random_features(rng, 203, 15, 0.3, dead=[0, 9, 100])
    else:
        net, feats = general_cases(rng)[case]
    cdir = _write_case(tmp_path / "case", net, feats)
    runs = [{"engine": e, "precision": p, "balance": b, "layout": layout, "segments": [1], "outputs": o, "top_k": k}
            for e in _engines() for p in ("fp32", "fp64")
            for b, layout, o, k in [("force", "shuffled", "activations", None), ("off", "block", "predictions", None),
                                    ("force", "block", "topk", 2)]]
    results = _launch(cdir, runs, 2)
    moved = 0
    for item in results:
        run, got = item["run"], item["result"]
        label = f"{case}: {run}"
        want = get_engine(run["engine"], precision=run["precision"]).run(net, feats, outputs=run["outputs"],
                                                                         top_k=run["top_k"])
        assert got["categories"] == want.categories.tolist(), label
        assert got["survivors"] == want.survivors.tolist(), label
        with np.load(item["outputs_file"]) as saved:
            _same_outputs(dict(saved), want, label)
        moved += got["extra"]["rows_moved"]
    assert moved > 0                   # some forced rebalance moved rows (held zero rows included)


def test_auto_balance_is_on_for_host_engines_and_off_for_device_engines():
    from spdnn.distributed.mpi import RELOAD_COST_GUESS, _policy

    assert isinstance(_policy("auto", "cpu"), BalancePolicy)
    assert isinstance(_policy("auto", "reference"), BalancePolicy)
    for name in RELOAD_COST_GUESS:
        assert _policy("auto", name) is None
        assert isinstance(_policy(True, name), BalancePolicy)     # still available on request
    assert _policy(False, "cpu") is None


@pytest.mark.mpi
@pytest.mark.parametrize("balance", ["auto", "on", "off"])
def test_cli_run_under_mpiexec_passes(tmp_path, balance):
    """`mpiexec -n 2 spdnn run ... --balance B`: rank 0 prints one JSON object, PASS."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("needs MPI: no mpiexec beside sys.executable or on PATH")
    engine = "cpu" if "cpu" in _engines() else "reference"
    env = dict(os.environ, NUMBA_NUM_THREADS="1", SPDNN_CACHE_DIR=str(tmp_path / "cache"))
    args = ["-m", "spdnn", "run", "--neurons", "64", "--layers", "12", "--samples", "200", "--engine", engine,
            "--json", "--no-progress"]
    one = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=MPI_TIMEOUT)
    assert one.returncode == 0, one.stdout + one.stderr
    cmd = [mpiexec, "-n", "2", sys.executable, *args, "--balance", balance]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=MPI_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single, doc = json.loads(one.stdout), json.loads(proc.stdout)     # exactly one object: rank 0's
    assert doc["passed"] is True and doc["categories_count"] == single["categories_count"]
    assert doc["samples"] == 200 and doc["ranks"] == 2 and single["ranks"] == 1
    assert doc["survivors"] == single["survivors"]
