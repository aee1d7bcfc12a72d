"""Helper launched by tests/test_distributed.py under ``mpiexec -n P``.

Usage::

    mpiexec -n 2 python tests/_mpi_worker.py CASE_DIR RUNS_JSON OUT_JSON

``CASE_DIR`` holds ``network.npz`` (written by :func:`save_network`) and
``features.npz`` (written by :func:`spdnn.distributed.save_npz_source`; every rank reads
only its rows through :class:`spdnn.distributed.NpzSource`). ``RUNS_JSON`` is a list of
runs ``{"engine", "precision", "balance": "on"|"off"|"force", "layout": "shuffled"|"block"
(optional), "segments": [..] (optional), "outputs", "top_k" (optional)}``;
they all run in this one launch (one network load, one JIT compilation). Rank 0 writes
``OUT_JSON``: a list of ``{"run", "result": InferenceResult.to_dict()}``, with
``"outputs_file"``: an .npz of the result's outputs, predictions and top-k (whichever
are set) for runs that ask for outputs. Networks not of the challenge's form travel as
``network.pkl``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def save_network(path, network) -> None:
    """Write a materialized network's layers, bias and ymax to one .npz (the challenge's
    form); any other network is pickled beside it (``network.pkl``)."""
    if not network.challenge_form:
        import pickle

        Path(path).with_suffix(".pkl").write_bytes(pickle.dumps(network))
        return
    arrays = {"bias": np.ascontiguousarray(network.bias), "ymax": np.float64(network.ymax)}
    for k, w in enumerate(network.layers):
        arrays[f"indptr{k}"], arrays[f"indices{k}"], arrays[f"data{k}"] = w.indptr, w.indices, w.data
    np.savez(path, **arrays)


def load_network(path):
    """Read what :func:`save_network` wrote."""
    from spdnn.network import Network

    if Path(path).with_suffix(".pkl").exists():
        import pickle

        return pickle.loads(Path(path).with_suffix(".pkl").read_bytes())

    with np.load(path) as z:
        bias = z["bias"]
        n = bias.shape[1]
        layers = [sp.csr_matrix((z[f"data{k}"], z[f"indices{k}"], z[f"indptr{k}"]), shape=(n, n))
                  for k in range(bias.shape[0])]
        return Network.from_layers(layers, bias, ymax=float(z["ymax"]))


def balance_option(mode: str):
    """'on' (default policy), 'off', or 'force' (rebalance at any imbalance, cost ignored)."""
    from spdnn.distributed import BalancePolicy

    return {"on": True, "off": False, "force": BalancePolicy(threshold=1.0, cost_aware=False)}[mode]


def main(argv: list[str]) -> int:
    from spdnn.distributed import NpzSource, run_distributed, world

    case, runs_file, out_file = Path(argv[0]), Path(argv[1]), Path(argv[2])
    here = world()
    network = load_network(case / "network.npz")
    features = NpzSource(case / "features.npz")
    runs = json.loads(runs_file.read_text())
    out = []
    for run in runs:
        result = run_distributed(network, features, engine=run["engine"], precision=run["precision"],
                                 balance=balance_option(run["balance"]), segment_layers=run.get("segments"),
                                 layout=run.get("layout", "shuffled"), outputs=run.get("outputs", "categories"),
                                 top_k=run.get("top_k"))
        item = {"run": run, "size": here.size, "result": result.to_dict()}
        if here.rank == 0 and run.get("outputs", "categories") != "categories":
            saved = out_file.with_name(f"{out_file.stem}-outputs{len(out)}.npz")
            np.savez(saved, **{name: getattr(result, name) for name in ("outputs", "predictions", "top_indices",
                                                                        "top_values")
                               if getattr(result, name) is not None})
            item["outputs_file"] = str(saved)
        elif here.rank != 0:
            assert result.outputs is None and result.predictions is None
        out.append(item)
    if here.rank == 0:
        out_file.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
