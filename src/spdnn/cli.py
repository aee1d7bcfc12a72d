"""The ``spdnn`` command line (click).

Commands: ``run`` (inference on generated or official data, checked against the
truth), ``generate``, ``download``, ``verify``, ``info`` and ``bench``.

Conventions: results go to stdout (``--json`` makes it one JSON object); progress
bars and status lines go to stderr. Exit codes: 0 success / PASS, 1 categories differ
from the truth (FAIL), 2 usage or data errors (printed as one line
``spdnn: error: ...`` on stderr, without a traceback).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import DataNotFoundError, FormatError, OptionError, SpdnnError
from .engines import ENGINES, PRECISIONS

__all__ = ["cli", "main"]

ENGINE_CHOICES = ["auto", *ENGINES]
PRECISION_CHOICES = sorted(PRECISIONS)


class CliError(click.ClickException):
    """A user-facing failure: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"spdnn: error: {self.format_message()}", err=True, file=file)


class SpdnnGroup(click.Group):
    """A click group that turns spdnn's own errors (and failed file operations) into :class:`CliError`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpdnnError as exc:
            raise CliError(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            raise CliError(f"{exc.filename}: {exc.strerror or exc}") from exc


def _progress(value: bool | None) -> bool:
    """--progress/--no-progress; unset means: when stderr is a terminal."""
    return sys.stderr.isatty() if value is None else value


def _status(message: str) -> None:
    click.echo(message, err=True)


def _echo_json(obj) -> None:
    from .report import to_json

    click.echo(to_json(obj))


progress_option = click.option(
    "--progress/--no-progress", default=None,
    help="Progress bars on stderr (default: only when stderr is a terminal).")


@click.group(cls=SpdnnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spdnn")
def cli():
    """Sparse deep neural network inference (Graph Challenge Sparse DNN).

    \b
    spdnn run                      default job: N=1024, L=120, generated data
    spdnn run --data DIR           official files (neuron{N}/, sparse-images-{N}, truth)
    spdnn bench --cells 1024x120   engines side by side, against a floor
    spdnn info                     engines and devices available here

    Exit status: 0 success (PASS), 1 categories differ from the truth, 2 usage or
    data errors.
    """


# ---------------------------------------------------------------------------- run


def _world() -> tuple[int, int]:
    """(rank, size) of an MPI launch; (0, 1) when not launched under mpiexec."""
    try:
        from .distributed import world
    except ImportError:  # distribution not installed: a single process
        return 0, 1
    w = world()
    return int(w.rank), int(w.size)


def _load_generated(neurons, layers, seed, samples, truth_file, bias, progress):
    from .bench import materialized
    from .config import cache_dir
    from .generate import cached_challenge

    network, features, truth, info = cached_challenge(neurons, layers, seed=seed, samples=samples,
                                                      progress=progress, bias=bias)
    network = materialized(network)  # build the lazy layers now: reading time, not inference time
    source = {"kind": "generated", "neurons": neurons, "layers": layers, "seed": seed,
              "cache": str(cache_dir() / "generated"), "truth_from": info}
    text = f"generated offline (RadiX-Net + MNIST, seed {seed}), cached in {cache_dir() / 'generated'}"
    if truth_file is not None:
        from .formats import read_categories

        truth = read_categories(truth_file)
        source["truth"] = str(truth_file)
    return network, features, truth, source, text


def _generated_bias(paths) -> float:
    """The bias of a non-official N, from the info file ``spdnn generate`` writes beside the truth."""
    from .network import OFFICIAL_BIAS

    if paths.neurons in OFFICIAL_BIAS:
        return OFFICIAL_BIAS[paths.neurons]
    info_path = None if paths.truth is None else Path(paths.truth).with_suffix(".json")
    if info_path is None or not info_path.is_file():
        raise OptionError(f"N={paths.neurons} has no official bias and no generator info file "
                          f"(neuron{paths.neurons}-l{{L}}-categories.json) was found: pass --bias")
    try:
        return float(json.loads(info_path.read_text(encoding="utf-8"))["bias"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"no numeric 'bias' entry ({type(exc).__name__}: {exc}); pass --bias",
                          path=info_path) from exc


def _load_official(data, neurons, layers, samples, truth_file, bias, progress):
    from .formats import find_official, read_categories, read_features, read_network

    paths = find_official(data, neurons=neurons, layers=layers)
    if paths.features is None:
        raise DataNotFoundError(f"{data}: no features file found (expected sparse-images-{paths.neurons}.tsv[.gz] "
                                f"or a .mtx[.gz])")
    if bias is None:
        bias = _generated_bias(paths)
    network = read_network(paths.network, neurons=paths.neurons, layers=paths.layers, bias=bias, progress=progress)
    features = read_features(paths.features, paths.neurons)
    if samples is not None:
        features = features[:samples]
    truth_path = truth_file if truth_file is not None else paths.truth
    truth = None
    if truth_path is not None:
        truth = read_categories(truth_path)
        if samples is not None:
            truth = truth[truth <= samples]
    source = {"kind": "official", "network": str(paths.network), "features": str(paths.features),
              "truth": None if truth_path is None else str(truth_path)}
    text = f"{paths.network} + {paths.features}" + (f", truth {truth_path}" if truth_path else ", no truth file")
    return network, features, truth, source, text


@cli.command()
@click.option("--neurons", "-n", type=click.IntRange(min=1), default=None,
              help="N, neurons per layer [generated: 1024; --data: inferred from the files].")
@click.option("--layers", "-l", type=click.IntRange(min=1), default=None,
              help="L, number of layers [generated: 120; --data: all layer files found].")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory with the official layout (neuron{N}/ or neuron{N}.tar.gz, sparse-images-{N}.tsv[.gz] "
                   "or .mtx[.gz], neuron{N}-l{L}-categories.tsv). Without it the data are generated offline "
                   "and cached.")
@click.option("--truth", "truth_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Truth categories file (overrides the one found or generated).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Use only the first S samples [all: 60,000 for generated data].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the generated network's permuted layers (generated data only).")
@click.option("--bias", type=float, default=None,
              help="Bias of every neuron and layer [the official one for N=1024..65536; for other N the "
                   "generator's (generated data, or the .json spdnn generate writes beside the truth)].")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="auto", show_default=True,
              help="Engine; auto picks cuda with a GPU, else cpu, else reference.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp32", show_default=True,
              help="Activation and accumulation precision; fp64 equals the reference bit for bit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--balance", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Under mpiexec: rebalance surviving samples between ranks (auto: on for CPU engines, "
                   "off for GPU engines, where the shuffled split measured balanced and a move costs more).")
@click.option("--save-categories", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the categories found to this file (one 1-based id a line).")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="On FAIL, recompute the differing samples in fp64 (and exactly) and say who was right.")
@progress_option
def run(neurons, layers, data, truth_file, samples, seed, bias, engine, precision, as_json, balance,
        save_categories, explain, progress):
    """Run inference and check the categories against the truth.

    Prints the data source, the engine, the categories found, PASS/FAIL against the
    truth (with the missing and extra ids on FAIL), the reading, preprocessing and
    inference seconds and the throughput in TeraEdges/s. Under ``mpiexec -n P`` the
    samples are split over the ranks and rank 0 prints.
    """
    from .engines import get_engine
    from .verify import compare_categories

    progress = _progress(progress)
    rank, size = _world()
    if rank != 0:
        progress = False
    t0 = time.perf_counter()
    if data is None:
        network, features, truth, source, source_text = _load_generated(
            neurons or 1024, layers or 120, seed, samples, truth_file, bias, progress)
    else:
        network, features, truth, source, source_text = _load_official(
            data, neurons, layers, samples, truth_file, bias, progress)
    read_seconds = time.perf_counter() - t0

    if size > 1:
        from .distributed import run_distributed

        policy = {"auto": "auto", "on": True, "off": False}[balance]
        result = run_distributed(network, features, engine=engine, precision=precision, balance=policy,
                                 progress=progress)
    else:
        result = get_engine(engine, precision=precision, progress=progress).run(network, features)
    if rank != 0:
        return

    summary = {
        "engine": result.engine, "precision": result.precision, "neurons": result.neurons,
        "layers": result.layers, "samples": result.samples, "edges": result.edges,
        "categories_count": int(len(result.categories)), "passed": None,
        "inference_seconds": result.inference_seconds, "preprocess_seconds": result.preprocess_seconds,
        "read_seconds": read_seconds, "teraedges_per_second": result.teraedges_per_second,
        "survivors": result.survivors, "ranks": size, "source": source_text, "data": source,
    }
    if truth is not None:
        cmp = compare_categories(result.categories, truth)
        summary.update(passed=bool(cmp.passed), truth_count=int(cmp.truth_count), missing=cmp.missing,
                       extra=cmp.extra)
        if not cmp.passed and explain:
            from .verify import explain_differences

            if not as_json:
                _status("categories differ from the truth: recomputing the differing samples (fp64, exact)")
            explanation = explain_differences(network, features, result.categories, truth,
                                              found_precision=result.precision, progress=progress)
            summary["explanation"] = explanation.to_dict()
            summary["explanation_text"] = explanation.to_text()
    if save_categories is not None:
        from .formats import write_categories

        write_categories(save_categories, result.categories)
        summary["categories_file"] = str(save_categories)
    summary["engine_info"] = result.extra
    summary["categories"] = result.categories
    if as_json:
        _echo_json({k: v for k, v in summary.items() if k != "explanation_text"})
    else:
        from .report import format_run

        click.echo(format_run(summary))
    if summary["passed"] is False:
        sys.exit(1)


# ----------------------------------------------------------------------- generate


def _show_value(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"{len(value)} files ({value[0]} ... {value[-1]})"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _print_paths(paths) -> None:
    """Print what a writer returned: a dataclass, a mapping, a sequence or one path."""
    if hasattr(paths, "__dataclass_fields__"):
        paths = {key: getattr(paths, key) for key in paths.__dataclass_fields__}
    if isinstance(paths, dict):
        for key, value in paths.items():
            click.echo(f"{key}: {_show_value(value)}")
    elif isinstance(paths, (list, tuple)):
        for value in paths:
            click.echo(str(value))
    else:
        click.echo(str(paths))


@cli.command()
@click.option("--neurons", "-n", type=click.IntRange(min=1), required=True,
              help="N = 16 * 2**S (e.g. 1024, 4096, 16384, 65536).")
@click.option("--layers", "-l", type=click.IntRange(min=1), required=True, help="L, number of layers.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory (created); receives the official layout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the permuted layers (L > S).")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="First S samples only [60,000].")
@click.option("--truth-engine", type=click.Choice(["auto", "reference", "cpu", "cuda"]), default="auto",
              show_default=True, help="Engine computing the float64 truth (auto: cpu fp64 if available).")
@progress_option
def generate(neurons, layers, out_dir, seed, samples, truth_engine, progress):
    """Generate challenge data offline: RadiX-Net weights, MNIST inputs, fp64 truth.

    Writes OUT/neuron{N}/n{N}-l{k}.tsv, OUT/sparse-images-{N}.tsv.gz and
    OUT/neuron{N}-l{L}-categories.tsv (+ .json saying which engine made the truth).
    Same seed, same bytes.
    """
    from .generate import write_challenge

    paths = write_challenge(out_dir, neurons, layers, seed=seed, samples=samples, truth_engine=truth_engine,
                            progress=_progress(progress))
    _print_paths(paths)


# ----------------------------------------------------------------------- download


def _split_what(ctx, param, value):
    allowed = ("network", "features", "truth")
    items = [w.strip() for v in value for w in v.split(",") if w.strip()]
    for w in items:
        if w not in allowed:
            raise click.BadParameter(f"{w!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(items)) or allowed


@cli.command()
@click.option("--neurons", "-n", type=click.IntRange(min=1), required=True, help="N (1024, 4096, 16384, 65536).")
@click.option("--layers", "-l", type=click.IntRange(min=1), required=True, help="L of the truth file (120, 480, 1920).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Destination directory (created).")
@click.option("--base-url", default=None, help="Base address [the official Graph Challenge bucket].")
@click.option("--what", multiple=True, callback=_split_what,
              help="network, features, truth (comma-separated or repeated) [all three].")
@progress_option
def download(neurons, layers, out_dir, base_url, what, progress):
    """Download the official files (MD5-checked, resumable, atomic)."""
    from .formats import download_official

    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {} if base_url is None else {"base_url": base_url}
    paths = download_official(neurons, layers, out_dir, what=what, progress=_progress(progress), **kwargs)
    _print_paths(paths)


# ------------------------------------------------------------------------- verify


@cli.command()
@click.argument("categories", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("truth", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def verify(categories, truth, as_json):
    """Check a CATEGORIES file against a TRUTH file (exit 0 equal, 1 different)."""
    from .formats import read_categories
    from .report import format_comparison
    from .verify import compare_categories

    cmp = compare_categories(read_categories(categories), read_categories(truth))
    if as_json:
        _echo_json({"categories": str(categories), "truth": str(truth), "passed": bool(cmp.passed),
                    "found_count": cmp.found_count, "truth_count": cmp.truth_count,
                    "missing": cmp.missing, "extra": cmp.extra})
    else:
        click.echo(format_comparison(bool(cmp.passed), cmp.missing, cmp.extra, found_count=cmp.found_count,
                                     truth_count=cmp.truth_count))
    if not cmp.passed:
        sys.exit(1)


# --------------------------------------------------------------------------- info


def _devices() -> tuple[list[dict], str]:
    from .config import cupy_status

    ok, why = cupy_status()
    if not ok:
        return [], why
    import cupy as cp

    devices = []
    for i in range(cp.cuda.runtime.getDeviceCount()):
        props = cp.cuda.runtime.getDeviceProperties(i)
        name = props["name"]
        devices.append({"id": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                        "memory_bytes": int(props["totalGlobalMem"]),
                        "compute_capability": f"{props['major']}.{props['minor']}"})
    return devices, why


def collect_info() -> dict:
    """What ``spdnn info`` reports, as a dict."""
    import numpy
    import scipy

    from .config import cache_dir, mpi_status, numba_status
    from .engines import available_engines, resolve_engine_name

    engines = {name: {"available": bool(ok), "reason": why} for name, (ok, why) in available_engines().items()}
    devices, cuda_reason = _devices()
    mpi_ok, mpi_why = mpi_status()
    numba_ok, numba_why = numba_status()
    numba_info = {"available": numba_ok, "reason": numba_why}
    if numba_ok:
        import numba

        numba_info["threads"] = int(numba.config.NUMBA_NUM_THREADS)
    return {
        "version": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
        "scipy": scipy.__version__, "engines": engines, "auto_engine": resolve_engine_name("auto"),
        "devices": devices, "cuda_reason": cuda_reason,
        "mpi": {"available": mpi_ok, "reason": mpi_why, "mpiexec": shutil.which("mpiexec")},
        "numba": numba_info, "cpu_count": os.cpu_count(), "cache_dir": str(cache_dir()),
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(as_json):
    """Show the version, engines (available or why not), devices, MPI, numba threads, cache dir."""
    data = collect_info()
    if as_json:
        _echo_json(data)
    else:
        from .report import format_info

        click.echo(format_info(data))


# -------------------------------------------------------------------------- bench


def _split_engines(ctx, param, value):
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        if name not in ENGINES:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(ENGINES)}")
    if not names:
        raise click.BadParameter("no engine given")
    return names


def _bandwidth(ctx, param, value):
    if value == "auto":
        return value
    try:
        gbs = float(value)
    except ValueError:
        gbs = float("nan")
    if not gbs > 0 or gbs == float("inf"):
        raise click.BadParameter(f"{value!r} is not a positive number of GB/s or 'auto'")
    return gbs


@cli.command()
@click.option("--cells", multiple=True, default=["1024x120"], show_default=True,
              help="Cells NxL, comma-separated or repeated (e.g. 1024x120,4096x120).")
@click.option("--engines", "engine_names", default=None, callback=_split_engines,
              help="Engines, comma-separated [those of cuda,cusparse,cpu available here].")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per engine and cell, after one warm-up run.")
@click.option("--samples", type=click.IntRange(min=1), default=60000, show_default=True,
              help="First S samples of the generated features.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp32", show_default=True,
              help="Precision of every engine (the truth is always float64).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (every cell, engine, repeat, survivors, floor) as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG plot (needs matplotlib).")
@click.option("--bandwidth-gbs", default="auto", show_default=True, callback=_bandwidth,
              help="Memory bandwidth of the floor, GB/s; auto: measured host copy / GPU peak.")
@click.option("--launch-us", type=click.FloatRange(min=0), default=None,
              help="Per-layer launch latency of the floor, microseconds [GPU 2, CPU 5].")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout instead of the table.")
@progress_option
def bench(cells, engine_names, repeats, samples, precision, seed, json_out, plot, bandwidth_gbs, launch_us,
          as_json, progress):
    """Time engines side by side on generated cells and compare with the floor.

    For each cell the data are prepared once (generated, cached); each engine runs
    once to warm up, then REPEATS times; the table shows the median inference time,
    TeraEdges/s and the ratio to the cell's floor (bytes of the surviving samples'
    activations read and written per layer at the memory bandwidth, plus one launch
    per layer). Every run's categories are checked against the float64 truth: exit 1
    after the table when any differs.
    """
    from . import bench as benchmod
    from .report import format_bench

    cell_list = benchmod.parse_cells(list(cells))
    if plot is not None:
        benchmod.require_matplotlib()
    engines = engine_names or benchmod.default_engines()
    report = benchmod.run_bench(cell_list, engines, repeats=repeats, samples=samples, precision=precision,
                                seed=seed, bandwidth_gbs=bandwidth_gbs,
                                launch_latency_s=None if launch_us is None else launch_us * 1e-6,
                                progress=_progress(progress), log=_status)
    if as_json:
        _echo_json(report)
    else:
        click.echo(format_bench(report))
    if json_out is not None:
        benchmod.write_json(report, json_out)
        _status(f"wrote {json_out}")
    if plot is not None:
        benchmod.write_plot(report, plot)
        _status(f"wrote {plot}")
    if not report["passed"]:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``spdnn`` console script and of ``python -m spdnn``."""
    cli.main(args=argv, prog_name="spdnn")


if __name__ == "__main__":  # pragma: no cover
    main()
