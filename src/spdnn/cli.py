"""The ``spdnn`` command line (click).

Commands: ``run`` (inference on generated or official data, checked against the
truth), ``generate``, ``download``, ``verify``, ``info``, ``bench``, ``predict`` (any
network on any inputs, scored against labels) and ``convert`` (a model to ``.spdnn``).

Conventions: results go to stdout (``--json`` makes it one JSON object); progress
bars and status lines go to stderr. Every failure is one line on stderr and an exit
code of :class:`~spdnn.errors.ExitCode` (README, "Errors"):

* 0 success / PASS; 1 the categories differ from the truth (FAIL);
* 2 a usage error (click's own included), a data error (any
  :class:`~spdnn.errors.SpdnnError`), a full disk, an unwritable or missing path:
  ``spdnn: error: <what, naming the file, line or option>``;
* 3 an unexpected exception (a bug): ``spdnn: internal error: <type>: <message>`` and
  a hint to report it; ``SPDNN_DEBUG=1`` prints the traceback before the line;
* 130 Ctrl-C (``spdnn: interrupted``), 143 SIGTERM (``spdnn: terminated``), 141 stdout
  closed by its reader (silent).

Warnings of spdnn (:class:`~spdnn.errors.SpdnnWarning`, or any warning issued from the
package) are one line ``spdnn: warning: ...`` and do not change the exit status.

Files are written atomically (:mod:`spdnn._atomic`), so an error or an interruption
leaves no partial file. Errors raised by the Python API name its arguments
(``layers=L``); a command restates them as its own options (``--layers L``).
"""
from __future__ import annotations

import contextlib
import errno
import inspect
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import click

from . import __version__
from .config import env_flag
from .errors import (DISK_FULL_ERRNOS, DataNotFoundError, ExitCode, FormatError, OptionError, SpdnnError,
                     SpdnnWarning, format_bytes, quote)
from .engines import ENGINES, PRECISIONS
from .network import OFFICIAL_SAMPLES

__all__ = ["cli", "main"]

ENGINE_CHOICES = ["auto", *ENGINES]
PRECISION_CHOICES = sorted(PRECISIONS)
TRISTATE = ["auto", "on", "off"]

#: Environment variable that adds the traceback to every error line (README, "Errors").
DEBUG_ENV = "SPDNN_DEBUG"


# ------------------------------------------------------------------------- errors


class CliError(click.ClickException):
    """A user-facing failure: one line ``spdnn: error: ...`` on stderr, exit status 2."""

    exit_code = int(ExitCode.ERROR)

    def show(self, file=None) -> None:
        click.echo(f"spdnn: error: {_one_line(self.format_message())}", err=True, file=file)


def _one_line(text: str) -> str:
    """``text`` on one line (a multi-line message joined with spaces)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _option_wording(message: str, command: click.Command) -> str:
    """Restate the API's argument wording (``layers=L``, ``neurons=1000:``) in the words of
    ``command``'s long options (``--layers L``, ``--neurons 1000:``).

    An argument is restated only where the command has an option of that name
    (``--truth-engine`` for ``truth_engine=``), and only as a whole word (not
    ``segment_layers=`` or ``BalancePolicy.layers=``).
    """
    options = {opt[2:].replace("-", "_"): opt for param in command.params if isinstance(param, click.Option)
               for opt in param.opts if opt.startswith("--")}
    if not options:
        return message
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(options, key=len, reverse=True)))
                         + r")=")
    return pattern.sub(lambda m: options[m.group(1)] + " ", message)


def _os_error_text(exc: OSError) -> str:
    """``path: reason`` for a failed file operation (``reason`` alone when no path is known)."""
    if isinstance(exc, SpdnnError):
        return str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        # a write outside spdnn._atomic (which raises DiskFullError with the space needed and
        # the file): without a file name, the command's output (``spdnn info > /dev/full``)
        where, free = "stdout (the command's output)", None
        if exc.filename is not None:
            where = os.fsdecode(exc.filename)
            try:
                free = shutil.disk_usage(Path(where).parent).free
            except OSError:
                pass
        return f"{where}: no space left on device" + ("" if free is None else f" ({format_bytes(free)} free)")
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    both = f"{os.fsdecode(exc.filename)} -> {os.fsdecode(exc.filename2)}" if exc.filename2 else os.fsdecode(
        exc.filename)
    return f"{both}: {reason}"


class SpdnnCommand(click.Command):
    """A command whose spdnn errors and failed file operations become one :class:`CliError`
    line, in the command's own option names."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpdnnError as exc:
            raise CliError(_option_wording(str(exc), self)) from exc
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            raise CliError(_option_wording(_os_error_text(exc), self)) from exc


class PipeClosed(Exception):
    """The reader of stdout went away (EPIPE); raised instead of the OSError, which click's
    main would turn into exit status 1 (the code of a FAIL)."""


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, ``timeout``): unwinds like Ctrl-C, so atomic writers
    remove their temporary files, and exits 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _from_spdnn(category, filename) -> bool:
    """Whether a warning is spdnn's own (an SpdnnWarning, or issued from the package)."""
    package = os.path.dirname(os.path.abspath(__file__))
    return issubclass(category, SpdnnWarning) or os.path.abspath(filename).startswith(package + os.sep)


def _warning_printer(others):
    """A ``warnings.showwarning`` for the command line: spdnn's own warnings as one line
    ``spdnn: warning: ...`` on stderr, any other passed to ``others``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not _from_spdnn(category, filename):
            others(message, category, filename, lineno, file, line)
            return
        text = _one_line(str(message))
        text = text[len("spdnn: "):] if text.startswith("spdnn: ") else text
        click.echo(f"spdnn: warning: {text}", err=True)

    return show


def _debug() -> bool:
    """SPDNN_DEBUG=1 asks for tracebacks. Read while reporting an error, so it never raises
    (:meth:`SpdnnGroup.main` refuses values other than 0 and 1 first)."""
    return os.environ.get(DEBUG_ENV, "").strip() == "1"


def _report(exc: BaseException) -> int:
    """Print ``exc`` as the one line of the error convention; return its exit code."""
    if _debug() and not isinstance(exc, click.UsageError):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        exc.show()  # a bare ``spdnn``: the help text
        return int(ExitCode.ERROR)
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"spdnn: error: {_one_line(exc.format_message()).rstrip('.')}{hint}", err=True)
        return int(ExitCode.ERROR)
    if isinstance(exc, click.ClickException):
        click.echo(f"spdnn: error: {_one_line(exc.format_message())}", err=True)
        return int(ExitCode.ERROR)
    if isinstance(exc, (click.Abort, KeyboardInterrupt)):
        click.echo("spdnn: interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    if isinstance(exc, Terminated):
        click.echo("spdnn: terminated", err=True)
        return int(ExitCode.TERMINATED)
    if isinstance(exc, PipeClosed):
        # The reader of stdout went away: nothing to tell it; silence the final flush.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return int(ExitCode.PIPE_CLOSED)
    if isinstance(exc, SpdnnError):
        click.echo(f"spdnn: error: {_one_line(str(exc))}", err=True)
        return int(ExitCode.ERROR)
    if isinstance(exc, OSError):
        click.echo(f"spdnn: error: {_one_line(_os_error_text(exc))}", err=True)
        return int(ExitCode.ERROR)
    if isinstance(exc, MemoryError):
        where = "device" if type(exc).__module__.startswith("cupy") else "host"   # CuPy's OutOfMemoryError
        click.echo(f"spdnn: error: out of {where} memory ({_one_line(str(exc)) or 'MemoryError'}); "
                   "try fewer --samples", err=True)
        return int(ExitCode.ERROR)
    debug = "" if _debug() else f"; run with {DEBUG_ENV}=1 for the traceback"
    click.echo(f"spdnn: internal error: {type(exc).__name__}: {_one_line(str(exc))} (a bug in spdnn "
               f"{__version__}: please report it with the command line{debug})", err=True)
    return int(ExitCode.INTERNAL)


class SpdnnGroup(click.Group):
    """The ``spdnn`` group: its commands are :class:`SpdnnCommand`, and run standalone it
    applies the error convention of the module docstring (one line, one exit code)."""

    command_class = SpdnnCommand

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise PipeClosed() from exc
            raise

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Run the command line; in standalone mode exit with :class:`ExitCode`.

        ``standalone_mode=False`` is click's: exceptions propagate to the caller.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with warnings.catch_warnings():
                # spdnn's warnings are shown (once per place), one line each, whatever the filters
                warnings.filterwarnings("default", category=SpdnnWarning)
                warnings.filterwarnings("default", module=r"spdnn(\.|$)")
                warnings.showwarning = _warning_printer(warnings.showwarning)
                env_flag(DEBUG_ENV)  # validated once, like every documented override
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and a code
            sys.exit(_report(exc))
        # click returns the command's value (None) or, after ctx.exit / --help, an exit code
        sys.exit(rv if isinstance(rv, int) else int(ExitCode.PASS))


def _progress(value: bool | None) -> bool:
    """--progress/--no-progress; unset means: when stderr is a terminal."""
    return sys.stderr.isatty() if value is None else value


def _status(message: str) -> None:
    click.echo(message, err=True)


def _echo_json(obj) -> None:
    from .report import to_json

    click.echo(to_json(obj))


def _writable_file(ctx, param, value: Path | None) -> Path | None:
    """Click callback: ``value`` can be written, checked before the work, so a long run is
    not lost to a typo. A regular file (or a symlink to one, or a new name) must be
    creatable in its folder (the write replaces it atomically); a device or FIFO must be
    writable (it is written in place); a directory or a symlink loop is refused
    (:func:`spdnn._atomic.output_target`). The write itself still reports its own failure."""
    from ._atomic import output_target

    if value is None:
        return None
    try:
        target = output_target(value)
    except OSError as exc:
        raise click.BadParameter(f"{value}: {exc.strerror or exc}") from None
    if target.in_place:
        if not os.access(target.path, os.W_OK):
            raise click.BadParameter(f"{value}: not writable")
        return value
    folder = target.path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise click.BadParameter(f"{value}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{value}: cannot create files in {folder}")
    return value


def _input_file(ctx, param, value: Path | None) -> Path | None:
    """Click callback: ``value`` is a regular file (or a symlink to one). A dangling symlink,
    a symlink loop, a directory, a FIFO or a device is refused by name
    (:func:`spdnn.formats.text.input_file`): a check the user asked for is never skipped,
    and a FIFO or ``/dev/zero`` never blocks the command."""
    from .formats.text import input_file

    if value is None:
        return None
    try:
        return input_file(value)
    except DataNotFoundError as exc:
        raise click.BadParameter(str(exc)) from None


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

    \b
    Exit status: 0 success (PASS), 1 categories differ from the truth, 2 usage or
    data error (also a full disk), 3 internal error (a bug; SPDNN_DEBUG=1 shows the
    traceback), 130 interrupted.
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


#: Parameters compared between the run's data and the truth's (spdnn.verify.truth_origin).
_ORIGIN_KEYS = ("neurons", "layers", "bias", "seed", "samples", "features_nnz")


class _Loaded:
    """What ``spdnn run`` reads: the data, the truth and what is known of the truth's origin.

    Attributes
    ----------
    network, features
        The run's inputs (features: CSR, samples x N).
    truth : int64 array or None
        1-based categories to check against (None: no truth known).
    source : dict
        JSON description of the data (the ``data`` key of ``--json``).
    text : str
        One-line description for the text report.
    made_with : dict
        What the truth is known to have been made with (keys of ``_ORIGIN_KEYS``).
    origin_source : str
        Where ``made_with`` comes from, or "unknown".
    same_data : bool
        The truth was computed from these very data in this process (or its cache).
    truth_seconds : float
        Seconds spent computing a generated truth while loading (not reading time).
    """

    def __init__(self, network, features, truth, source, text, made_with=None, origin_source="unknown",
                 same_data=False, truth_seconds=0.0):
        self.network, self.features, self.truth = network, features, truth
        self.source, self.text, self.truth_seconds = source, text, truth_seconds
        self.made_with = dict(made_with or {})
        self.origin_source, self.same_data = origin_source, same_data

    def origin(self, *, subset: bool, seed: int | None):
        """:class:`~spdnn.verify.TruthOrigin` of the truth against these data. With ``subset``
        (``--samples``) the sample count and nonzeros of the features are not compared."""
        from .verify import truth_origin

        run = {"neurons": self.network.neurons, "layers": self.network.depth,
               "bias": self.network.uniform_bias(), "seed": seed}
        if not subset:
            run.update(samples=int(self.features.shape[0]), features_nnz=int(self.features.nnz))
        made_with = {k: v for k, v in self.made_with.items() if k in _ORIGIN_KEYS}
        return truth_origin(made_with, run, source=self.origin_source, same_data=self.same_data)


#: Keys of the generator info file and the values each must hold (README, "spdnn generate").
_INFO_KEYS = {
    "neurons": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "layers": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "seed": ("an integer", lambda v: v is None or _is_int(v)),
    "samples": (f"a positive integer of at most {OFFICIAL_SAMPLES:,} (the MNIST images the generator draws from)",
                lambda v: _is_int(v) and 1 <= v <= OFFICIAL_SAMPLES),
    "features_nnz": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "categories_count": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "bias": ("a finite number (or null for a bias that is not uniform)",
             lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _truth_info(truth_path) -> dict | None:
    """The info file ``spdnn generate`` writes beside a truth file (same name, ``.json``), or None.

    Its known keys (:data:`_INFO_KEYS`) are checked here, once: a wrong type or value is
    a :class:`FormatError` naming the file and the key (``"samples": "2000"`` is not
    silently ignored, nor is ``"samples": -5`` blamed on ``--samples``).
    """
    from .formats.text import input_file

    info_path = Path(truth_path).with_suffix(".json")
    if not os.path.lexists(info_path):
        return None
    input_file(info_path)  # a dangling link, a loop, a folder or a FIFO is refused by name
    raw = info_path.read_bytes()[:1 << 20]
    try:
        info = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        raise FormatError(f"not a JSON generator info file ({quote(str(exc), 80)})", path=info_path) from None
    if not isinstance(info, dict):
        raise FormatError("expected a JSON object (generator info)", path=info_path)
    for key, (expected, valid) in _INFO_KEYS.items():
        if key in info and not valid(info[key]):
            raise FormatError(f"key {key!r}: expected {expected}, found {quote(json.dumps(info[key]))}",
                              path=info_path)
    return info


def _read_truth(path, count: int, subset: bool):
    """Categories of the truth file ``path`` for a run of ``count`` samples.

    With ``subset`` (``--samples S``) the ids beyond ``count`` are dropped (the truth of
    the first S samples); otherwise an id beyond is an error naming the file and line,
    raised before any inference.
    """
    from .formats import read_categories

    truth = read_categories(path, samples=None if subset else count)
    return truth[truth <= count] if subset else truth


def _load_generated(neurons, layers, seed, samples, truth_file, bias, progress, log=None) -> _Loaded:
    from .bench import materialized
    from .config import cache_dir
    from .generate import cached_challenge

    network, features, truth, info = cached_challenge(neurons, layers, seed=seed, samples=samples,
                                                      progress=progress, bias=bias, log=log)
    truth_seconds = info.get("seconds", {}).get("truth", 0.0)
    network = materialized(network)  # build the lazy layers now: reading time, not inference time
    source = {"kind": "generated", "neurons": neurons, "layers": layers, "seed": seed,
              "cache": str(cache_dir() / "generated"), "truth_from": info}
    text = f"generated offline (RadiX-Net + MNIST, seed {seed}), cached in {cache_dir() / 'generated'}"
    if truth_file is None:
        return _Loaded(network, features, truth, source, text, made_with=info, same_data=True,
                       origin_source="computed from this run's generated data", truth_seconds=truth_seconds)
    source["truth"] = str(truth_file)
    truth = _read_truth(truth_file, features.shape[0], samples is not None)
    made_with = _truth_info(truth_file)
    return _Loaded(network, features, truth, source, text, made_with=made_with,
                   origin_source="unknown" if made_with is None else str(Path(truth_file).with_suffix(".json")),
                   truth_seconds=truth_seconds)


def _official_bias(paths) -> tuple[float, str]:
    """The bias of the network in ``paths`` and where it comes from: the official bias of N,
    else the info file ``spdnn generate`` writes beside the truth."""
    from .network import OFFICIAL_BIAS

    if paths.neurons in OFFICIAL_BIAS:
        return OFFICIAL_BIAS[paths.neurons], f"the official bias of N={paths.neurons}"
    info = None if paths.truth is None else _truth_info(paths.truth)
    if info is None:
        raise OptionError(f"N={paths.neurons} has no official bias and no generator info file "
                          f"(neuron{paths.neurons}-l{{L}}-categories.json) was found: pass --bias")
    bias = info.get("bias")
    if bias is None:
        raise FormatError(f"no uniform 'bias' entry (found {quote(json.dumps(bias))}); pass --bias",
                          path=Path(paths.truth).with_suffix(".json"))
    return float(bias), str(Path(paths.truth).with_suffix(".json"))


def _features_of(path, neurons: int, declared: int | None, samples: int | None, progress):
    """The features of ``path`` for a run of ``--samples`` (None: all of them).

    How many samples the file holds: a MatrixMarket file declares it; for TSV it is the
    generator info's ``samples`` (``declared``, trailing samples without features
    included), else the largest sample id in the file (every official input has
    features), never an assumed 60,000. ``--samples`` beyond that count is an error
    naming the file, not a run over samples that do not exist.
    """
    import numpy as np

    from .formats import read_features
    from .formats.mtx import is_mtx

    mtx = is_mtx(path)
    bound = max(declared or OFFICIAL_SAMPLES, samples or 0)  # ids beyond it are a data error naming the line
    told = declared if declared is not None or mtx else bound
    features = read_features(path, neurons, samples=told, progress=progress)
    held = int(features.shape[0])
    if declared is None and not mtx:
        filled = np.flatnonzero(np.diff(features.indptr))
        held = int(filled[-1]) + 1 if filled.size else 0
        features = features[:held]
    if samples is not None:
        if samples > held:
            raise OptionError(f"samples={samples}: {path} holds {held:,} samples"
                              + (" (as its generator info declares)" if declared is not None else ""))
        features = features[:samples]
    return features


def _load_official(data, neurons, layers, samples, truth_file, bias, progress) -> _Loaded:
    from .formats import find_official, read_network
    from .network import OFFICIAL_BIAS

    paths = find_official(data, neurons=neurons, layers=layers)
    if paths.features is None:
        raise DataNotFoundError(f"{data}: no features file found (expected sparse-images-{paths.neurons}.tsv[.gz] "
                                f"or a .mtx[.gz])")
    if bias is None:
        bias, _ = _official_bias(paths)
    network = read_network(paths.network, neurons=paths.neurons, layers=paths.layers, bias=bias, progress=progress)
    info = None if paths.truth is None else _truth_info(paths.truth)
    features = _features_of(paths.features, paths.neurons, None if info is None else info.get("samples"), samples,
                            progress)
    truth_path = truth_file if truth_file is not None else paths.truth
    source = {"kind": "official", "network": str(paths.network), "features": str(paths.features),
              "truth": None if truth_path is None else str(truth_path)}
    text = f"{paths.network} + {paths.features}" + (f", truth {truth_path}" if truth_path else ", no truth file")
    if truth_path is None:
        return _Loaded(network, features, None, source, text)
    truth = _read_truth(truth_path, features.shape[0], samples is not None)
    made_with, origin_source = _truth_info(truth_path), str(Path(truth_path).with_suffix(".json"))
    if made_with is None and truth_file is None and paths.neurons in OFFICIAL_BIAS:
        # an official-layout truth without generator info: the official one of its N
        made_with = {"neurons": paths.neurons, "bias": OFFICIAL_BIAS[paths.neurons]}
        origin_source = f"{Path(truth_path).name}, taken as the official truth of N={paths.neurons}"
    return _Loaded(network, features, truth, source, text, made_with=made_with,
                   origin_source=origin_source if made_with is not None else "unknown")


def _fit_memory(network, features, engine: str, precision: str) -> dict:
    """Engine options that make the run fit the host memory (:func:`spdnn.memory.check_run`)."""
    from .engines import resolve_engine_name
    from .memory import check_run

    data = features.data
    values = bool(data.size) and data.strides != (0,) and not (data.min() == data.max() == 1.0)
    _, options = check_run(network.neurons, network.depth, int(features.shape[0]), engine=resolve_engine_name(engine),
                           precision=precision, nnz=int(features.nnz), values=values,
                           layers_in_memory=isinstance(network.layers, list))
    return options


def _default_precision(engine: str) -> str:
    """The precision the engine's constructor defaults to (reference: fp64, the others fp32)."""
    from .engines import engine_class, resolve_engine_name

    cls = engine_class(resolve_engine_name(engine))
    default = inspect.signature(cls).parameters["precision"].default
    return default if default in PRECISIONS else "fp32"


def _merging_engines() -> list[str]:
    """Names of the engines whose constructor takes ``merge`` (they merge identical samples)."""
    from .engines import engine_merges
    from .errors import EngineUnavailableError

    names = []
    for name in ENGINES:
        try:
            if engine_merges(name):
                names.append(name)
        except EngineUnavailableError:
            continue
    return names


def _merge_options(engine: str, merge: str) -> dict:
    """Constructor options for ``--merge``: nothing for 'auto' (every engine's default), else
    ``merge=True/False`` for an engine that merges; an OptionError for one that does not."""
    from .engines import resolve_engine_name
    from .options import check_merge

    value = check_merge(merge)
    if value == "auto":
        return {}
    name = resolve_engine_name(engine)
    merging = _merging_engines()
    if name not in merging:
        raise OptionError(f"--merge {merge}: engine {name!r} does not merge identical samples "
                          f"(engines that do: {', '.join(merging) or 'none here'}); use --merge auto")
    return {"merge": value}


def _save(path: Path, categories) -> None:
    """Write ``categories`` to ``path`` atomically; a failure is a CliError naming the
    option and ``path`` as the user gave it (the result is already printed)."""
    from .formats import write_categories

    try:
        write_categories(path, categories)
    except (OSError, SpdnnError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise CliError(f"--save-categories {path}: {reason} (the result above was not saved)") from exc


@cli.command()
@click.option("--neurons", "-n", type=click.IntRange(min=1), default=None,
              help="N, neurons per layer [generated: 1024; --data: inferred from the files].")
@click.option("--layers", "-l", type=click.IntRange(min=1), default=None,
              help="L, number of layers [generated: 120; --data: all layer files found].")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Directory with the official layout (neuron{N}/ or neuron{N}.tar.gz, sparse-images-{N}.tsv[.gz] "
                   "or .mtx[.gz], neuron{N}-l{L}-categories.tsv). Without it the data are generated offline "
                   "and cached.")
@click.option("--truth", "truth_file", type=click.Path(path_type=Path), default=None, callback=_input_file,
              help="Truth categories file (overrides the one found or generated).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Use only the first S samples (and the truth's ids up to S) [all: 60,000 for generated data].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the generated network's permuted layers (generated data only).")
@click.option("--bias", type=float, default=None,
              help="Bias of every neuron and layer [the official one for N=1024..65536; for other N the "
                   "generator's (generated data, or the .json spdnn generate writes beside the truth)].")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="auto", show_default=True,
              help="Engine; auto picks cuda with a GPU, else cpu, else reference.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="Activation and accumulation precision [the engine's default: fp64 for reference (the "
                   "truth), fp32 for the others]; fp64 equals the reference bit for bit.")
@click.option("--merge", type=click.Choice(TRISTATE), default="auto", show_default=True,
              help="Merge samples whose activations become identical (engines that merge: cpu, cuda); "
                   "results are bit for bit those of computing every copy. on/off force it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--balance", type=click.Choice(TRISTATE), default="auto", show_default=True,
              help="Under mpiexec: rebalance surviving samples between ranks (auto: on for CPU engines, "
                   "off for GPU engines, where the shuffled split measured balanced and a move costs more).")
@click.option("--save-categories", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=_writable_file,
              help="Also write the categories found to this file (one 1-based id a line), after the result "
                   "is printed.")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="On FAIL, recompute the differing samples in fp64 (and exactly) and say who was right.")
@progress_option
def run(neurons, layers, data, truth_file, samples, seed, bias, engine, precision, merge, as_json, balance,
        save_categories, explain, progress):
    """Run inference and check the categories against the truth.

    Prints the data source, the engine, the categories found, PASS/FAIL against the
    truth (with the missing and extra ids on FAIL), the reading, preprocessing and
    inference seconds and the throughput in TeraEdges/s. Under ``mpiexec -n P`` the
    samples are split over the ranks and rank 0 prints. The result is printed before
    ``--save-categories`` is written, so a failed write loses nothing.
    """
    from .engines import get_engine
    from .options import check_balance
    from .verify import compare_categories

    log = None if progress is False else _status   # status lines unless --no-progress, terminal or not
    progress = _progress(progress)
    rank, size = _world()
    if rank != 0:
        progress, log = False, None
    precision = precision or _default_precision(engine)
    options = {"precision": precision, **_merge_options(engine, merge)}
    t0 = time.perf_counter()
    if data is None:
        loaded = _load_generated(neurons or 1024, layers or 120, seed, samples, truth_file, bias, progress, log)
    else:
        loaded = _load_official(data, neurons, layers, samples, truth_file, bias, progress)
    network, features, truth = loaded.network, loaded.features, loaded.truth
    read_seconds = time.perf_counter() - t0 - loaded.truth_seconds   # a generated truth is not reading
    if size == 1:
        options.update(_fit_memory(network, features, engine, precision))

    if size > 1:
        from .distributed import run_distributed

        result = run_distributed(network, features, engine=engine, precision=precision,
                                 balance=check_balance(balance), progress=progress,
                                 engine_options={k: v for k, v in options.items() if k != "precision"})
    else:
        result = get_engine(engine, network, progress=progress, **options).run(network, features)
    if rank != 0:
        return

    summary = {
        "engine": result.engine, "precision": result.precision, "neurons": result.neurons,
        "layers": result.layers, "samples": result.samples, "edges": result.edges,
        "categories_count": int(len(result.categories)), "passed": None,
        "inference_seconds": result.inference_seconds, "preprocess_seconds": result.preprocess_seconds,
        "read_seconds": read_seconds, "truth_seconds": loaded.truth_seconds,
        "teraedges_per_second": result.teraedges_per_second,
        "survivors": result.survivors, "ranks": size, "merge": merge, "source": loaded.text,
        "data": loaded.source,
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
                                              found_precision=result.precision, progress=progress,
                                              origin=loaded.origin(subset=samples is not None,
                                                                   seed=seed if data is None else None))
            summary["explanation"] = explanation.to_dict()
            summary["explanation_text"] = explanation.to_text()
    if save_categories is not None:
        summary["categories_file"] = str(save_categories)  # asked for; a failed write exits 2
    summary["engine_info"] = result.extra
    summary["categories"] = result.categories
    if as_json:
        _echo_json({k: v for k, v in summary.items() if k != "explanation_text"})
    else:
        from .report import format_run

        click.echo(format_run(summary))
    if save_categories is not None:  # after the result is out: a failed write loses nothing
        _save(save_categories, result.categories)
        if not as_json:
            click.echo(f"written:      {save_categories}")
    if summary["passed"] is False:
        sys.exit(ExitCode.FAIL)


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


@contextlib.contextmanager
def _removed_if_failed(folder: Path):
    """On any failure of the block, remove ``folder`` and the parents it made, if this
    command created them and they are still empty: a failed ``download`` or ``generate``
    leaves no empty ``--out`` folder behind. What a failed download left to resume (a
    partial file) keeps its folder."""
    made = []
    probe = Path(folder)
    while not os.path.lexists(probe) and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    try:
        yield
    except BaseException:
        for path in made:  # deepest first
            try:
                path.rmdir()
            except OSError:
                break
        raise


@cli.command()
@click.option("--neurons", "-n", type=click.IntRange(min=1), required=True,
              help="N = 16 * 2**S (e.g. 1024, 4096, 16384, 65536).")
@click.option("--layers", "-l", type=click.IntRange(min=1), required=True, help="L, number of layers.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory (created); receives the official layout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the permuted layers (L > S).")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="First S samples only [60,000].")
@click.option("--truth-engine", type=click.Choice(["auto", "reference", "cpu", "cuda"]), default="auto",
              show_default=True, help="Engine computing the float64 truth (auto: the fastest exact one here, "
                                      "cuda with a GPU, else cpu).")
@progress_option
def generate(neurons, layers, out_dir, seed, samples, truth_engine, progress):
    """Generate challenge data offline: RadiX-Net weights, MNIST inputs, fp64 truth.

    Writes OUT/neuron{N}/n{N}-l{k}.tsv, OUT/sparse-images-{N}.tsv.gz and
    OUT/neuron{N}-l{L}-categories.tsv (+ .json saying which engine made the truth).
    Same seed, same bytes.
    """
    from .generate import write_challenge
    from .memory import check_generate

    check_generate(neurons, layers, samples)
    with _removed_if_failed(out_dir):
        paths = write_challenge(out_dir, neurons, layers, seed=seed, samples=samples, truth_engine=truth_engine,
                                progress=_progress(progress), log=None if progress is False else _status)
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
    from .formats.download import check_base_url

    kwargs = {} if base_url is None else {"base_url": check_base_url(base_url)}
    with _removed_if_failed(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = download_official(neurons, layers, out_dir, what=what, progress=_progress(progress), **kwargs)
    _print_paths(paths)


# ------------------------------------------------------------------------- verify


@cli.command()
@click.argument("categories", type=click.Path(path_type=Path), callback=_input_file)
@click.argument("truth", type=click.Path(path_type=Path), callback=_input_file)
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
        sys.exit(ExitCode.FAIL)


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
    from .formats import cache_info
    from .memory import host_available_bytes, memory_table

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
        "cache": cache_info(),
        "memory": {"host_available_bytes": host_available_bytes(), "needs": memory_table()},
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(as_json):
    """Show the version, engines (available or why not), devices, MPI, numba threads, cache dir."""
    _show(collect_info(), as_json, "format_info")


def _show(data: dict, as_json: bool, formatter: str) -> None:
    """Print ``data`` as one JSON object, or as text through ``report.<formatter>``."""
    if as_json:
        _echo_json(data)
    else:
        from . import report

        click.echo(getattr(report, formatter)(data))


# -------------------------------------------------------------------------- cache


@cli.group()
def cache():
    """The cache of parsed official data and of generated data (SPDNN_CACHE_DIR)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def cache_info_command(as_json):
    """Show where the cache is and how much it holds."""
    from .formats import cache_info

    _show(cache_info(), as_json, "format_cache")


@cache.command("clear")
def cache_clear_command():
    """Remove the cached data (parsed official files and generated data)."""
    from .formats import clear_cache

    freed = clear_cache()
    click.echo(f"removed {format_bytes(freed)}")


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


def _split_merge(ctx, param, value):
    from .options import check_merge

    settings = [v.strip() for v in value.split(",") if v.strip()]
    if not settings:
        raise click.BadParameter("no setting given (auto, on, off)")
    for v in settings:
        try:
            check_merge(v)
        except OptionError:
            raise click.BadParameter(f"{v!r} is not one of auto, on, off") from None
    return settings


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


def _json_checkpoint(json_out):
    """The bench's ``checkpoint``: where --json-out is a regular file (or not there yet),
    write the report after every cell, each time replacing the file atomically, so a run
    cut short keeps the cells it finished. None for no --json-out, and for a FIFO or a
    device: a reader takes one report, and a second write would wait for another reader."""
    from . import bench as benchmod

    if json_out is None or (os.path.exists(json_out) and not os.path.isfile(json_out)):
        return None
    return lambda partial: benchmod.write_json(partial, json_out)


def _bench_general(items, engine_names, repeats, samples, precision, seed, json_out, bandwidth_gbs, as_json,
                   progress, floor_constants=None):
    """``spdnn bench`` on general cells (spdnn.bench_general): cuda, cusparse and the PyTorch peers."""
    from . import bench as benchmod
    from . import bench_general as general

    checkpoint = _json_checkpoint(json_out)
    report = general.run_general_bench(items, engine_names or ("cuda", "cusparse"), repeats=repeats,
                                       samples=OFFICIAL_SAMPLES if samples is None else samples, precision=precision,
                                       seed=seed, bandwidth_gbs=bandwidth_gbs, floor_constants_from=floor_constants,
                                       progress=_progress(progress), log=None if progress is False else _status,
                                       checkpoint=checkpoint)
    if as_json:
        _echo_json(report)
    else:
        click.echo(general.format_general(report))
    if json_out is not None:
        if checkpoint is None:                  # a FIFO or a device: the final report alone
            benchmod.write_json(report, json_out)
        _status(f"wrote {json_out}")
    if not report["passed"]:
        sys.exit(ExitCode.FAIL)


def _finite(ctx, param, value):
    """Click callback: a number option must be finite (FloatRange lets nan and inf through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number")
    return value


@cli.command()
@click.option("--cells", multiple=True, default=(),
              help="Cells NxL, comma-separated or repeated (e.g. 1024x120,4096x120); 'grid': "
                   "N in 1024,4096,16384,65536 x L in 120,480,1920. General networks (issue 17): "
                   "'general', or wide4096, wide16384, sweep4096, zeros4096:P, mnistshape (cuda, "
                   "cusparse and PyTorch peers; see spdnn.bench_general) [1024x120; with --data: the problems "
                   "of DIR to time, default the one found there].")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Time the official files of this directory (the layout spdnn run --data reads, with its "
                   "truth file) instead of generated data.")
@click.option("--engines", "engine_names", default=None, callback=_split_engines,
              help="Engines, comma-separated [those of cuda,cusparse,cpu available here].")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per engine and cell, after one warm-up run.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="First S samples of the features [generated: 60,000; --data: all of the file].")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp32", show_default=True,
              help="Precision of every engine (the truth is always float64).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
@click.option("--merge", "merge", default="auto", show_default=True, callback=_split_merge,
              help="Settings of merging identical samples, comma-separated (auto, on, off): engines "
                   "that merge run once per setting, the others once.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_writable_file,
              help="Write the full report (every cell, engine, merge setting, repeat, floor) as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_writable_file,
              help="Write a PNG plot (needs matplotlib).")
@click.option("--bandwidth-gbs", default="auto", show_default=True, callback=_bandwidth,
              help="Memory bandwidth of the floor, GB/s; auto: measured host copy / GPU peak.")
@click.option("--launch-us", type=click.FloatRange(min=0), default=None, callback=_finite,
              help="Per-layer launch latency of the v1 floor, microseconds [GPU 2, CPU 5].")
@click.option("--floor-constants", "floor_constants", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON of the honest floor's constants (benchmarks/floor_constants.py); default: measured "
                   "on the device at the start (a few seconds).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout instead of the table.")
@progress_option
def bench(cells, data, engine_names, repeats, samples, precision, seed, merge, json_out, plot, bandwidth_gbs,
          launch_us, floor_constants, as_json, progress):
    """Time engines side by side on generated cells (or official files) and compare with the floor.

    For each cell the data are prepared once (generated and cached, or read from
    --data DIR with its truth); each engine runs
    once to warm up, then REPEATS times (once per --merge setting if it merges); the
    table shows the median inference time, TeraEdges/s and the ratio to the cell's floor
    (docs/floor.md: the bytes the engine's schedule must move, its arithmetic and the
    barriers between layers, at constants measured on the device), the ratio to the
    first model's floor (xfloor(v1): every layer's rows read and written at the memory
    bandwidth, plus a launch a layer), next to the published figures of the cell.
    Every run's categories are checked against the float64 truth: exit 1 after the
    table when any differs.
    """
    from . import bench as benchmod
    from .report import format_bench

    items = [item for chunk in cells for item in chunk.split(",") if item.strip()]
    from .bench_general import is_general_cell

    if items and all(is_general_cell(item) for item in items):
        return _bench_general(items, engine_names, repeats, samples, precision, seed, json_out, bandwidth_gbs, as_json,
                              progress, floor_constants)
    cell_list = benchmod.parse_cells(list(cells) or ["1024x120"])
    if plot is not None:
        benchmod.plot_format(plot)  # a missing matplotlib or an unknown extension fails before the run
    engines = engine_names or benchmod.default_engines()
    given = [] if data is None else [_bench_data(data, cell, samples, _progress(progress))
                                     for cell in (cell_list if cells else [(None, None)])]
    checkpoint = _json_checkpoint(json_out)
    report = benchmod.run_bench([] if data is not None else cell_list, engines, repeats=repeats,
                                samples=samples or 60000, precision=precision,
                                seed=seed, merge=merge, bandwidth_gbs=bandwidth_gbs,
                                launch_latency_s=None if launch_us is None else launch_us * 1e-6,
                                floor_constants_from=floor_constants, progress=_progress(progress),
                                log=None if progress is False else _status, data=given,
                                checkpoint=checkpoint)
    if as_json:
        _echo_json(report)
    else:
        click.echo(format_bench(report))
    if json_out is not None:
        if checkpoint is None:                  # a FIFO or a device: the final report alone
            benchmod.write_json(report, json_out)
        _status(f"wrote {json_out}")
    if plot is not None:
        benchmod.write_plot(report, plot)
        _status(f"wrote {plot}")
    if not report["passed"]:
        sys.exit(ExitCode.FAIL)


def _bench_data(data: Path, cell, samples, progress):
    """The official problem ``cell`` ((N, L), or (None, None): the one found) of ``data``
    for ``spdnn bench``, read as ``spdnn run --data`` reads it; its truth is required."""
    from .bench import BenchData

    neurons, layers = cell
    t0 = time.perf_counter()
    loaded = _load_official(data, neurons, layers, samples, None, None, progress)
    if loaded.truth is None:
        raise DataNotFoundError(f"--data {data}: no truth file (neuron{loaded.network.inputs}-l{loaded.network.depth}"
                                f"-categories.tsv or .mtx) found: spdnn bench checks every run against it")
    return BenchData(loaded.network, loaded.features, loaded.truth, loaded.source, time.perf_counter() - t0)


# --------------------------------------------------------------- predict, convert


@cli.command()
@click.argument("model", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("inputs", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="One label a row of INPUTS (*idx1-ubyte[.gz], .npy, .txt): prints the accuracy.")
@click.option("--example", is_flag=True,
              help="Use the example shipped in the package instead of MODEL INPUTS: the small sparse MNIST "
                   "network, the MNIST training images and labels, scored on the 10,000 it was not trained on.")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="auto", show_default=True,
              help="Engine; auto picks cuda with a GPU, else cpu, else reference.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="Precision [the engine's default: fp64 for reference, fp32 for the others].")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Use at most S samples [all].")
@click.option("--skip", type=click.IntRange(min=0), default=None,
              help="Skip the first K rows of INPUTS [0; --example: 50,000, the rows used in training].")
@click.option("--outputs", "outputs_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=_writable_file, help="Write the predictions (int64 .npy) or activations here, atomically.")
@click.option("--outputs-kind", type=click.Choice(["predictions", "activations"]), default="predictions",
              show_default=True, help="What --outputs holds: the argmax of each sample, or its final row "
                                      "(samples x outputs, the engine's float type).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a .pt/.pth holding a whole pickled module (unpickling runs code from the file).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@progress_option
def predict(model, inputs, labels, example, engine, precision, samples, skip, outputs_file, outputs_kind,
            trust_pickle, as_json, progress):
    """Run a network (.spdnn, .onnx, .pt/.pth) on INPUTS and score its predictions.

    INPUTS: .npy (dense, samples x inputs), .npz (CSR features), MNIST *idx3-ubyte[.gz]
    (pixel / 255, flattened) or the official features (.tsv[.gz], .mtx[.gz]). Prints the
    samples, the accuracy (with --labels), the inference seconds and the throughput
    (samples x nonzero weights / seconds, TeraEdges/s); --json keys: samples, accuracy,
    predictions ({count, file, kind}), inference_seconds, teraedges_per_second, engine,
    precision, ... The prediction of a sample is the argmax of its final row.
    """
    from .predict import format_predict, load_predict_inputs, run_predict, write_array

    if example:
        if model is not None or inputs is not None:
            raise click.UsageError("--example replaces MODEL and INPUTS: give one or the other")
        from .models import example_files

        files = example_files()
        model, inputs = files.model, files.images
        labels = labels or files.labels
        skip = files.held_out[0] if skip is None else skip
    elif model is None or inputs is None:
        raise click.UsageError("give MODEL and INPUTS, or --example")
    precision = precision or _default_precision(engine)
    job = load_predict_inputs(model, inputs, labels, samples=samples, skip=skip or 0, trust_pickle=trust_pickle,
                              progress=_progress(progress))
    summary, result = run_predict(job, engine=engine, precision=precision, outputs_kind=outputs_kind,
                                  progress=_progress(progress))
    if outputs_file is not None:
        write_array(outputs_file, result.predictions if outputs_kind == "predictions" else result.outputs)
        summary["predictions"]["file"] = str(outputs_file)
    if as_json:
        _echo_json(summary)
    else:
        click.echo(format_predict(summary))
        if outputs_file is not None:
            click.echo(f"written:      {outputs_file} ({outputs_kind})")


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), callback=_writable_file)
@click.option("--storage", type=click.Choice(["auto", "sparse", "dense"]), default="auto", show_default=True,
              help="How each imported layer is held; auto: sparse when at most --sparse-threshold of its "
                   "weights are nonzero.")
@click.option("--sparse-threshold", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Density at or under which --storage auto keeps a layer sparse.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a .pt/.pth holding a whole pickled module (unpickling runs code from the file).")
def convert(model, out, storage, sparse_threshold, trust_pickle):
    """Convert MODEL (.pt/.pth, .onnx, .spdnn) to spdnn's model file OUT (.spdnn), atomically."""
    from .models import read_model, save_model

    network = read_model(model, trust_pickle=trust_pickle, storage=storage, sparse_threshold=sparse_threshold)
    save_model(network, out, metadata={"converted_from": Path(model).name})
    click.echo(f"{out}: {network.describe()}, {network.edges:,} edges")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``spdnn`` console script and of ``python -m spdnn``.

    Exits with :class:`~spdnn.errors.ExitCode` (module docstring); SIGTERM is handled like
    Ctrl-C (clean-up, one line ``spdnn: terminated``, exit 143).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    cli.main(args=argv, prog_name="spdnn")


if __name__ == "__main__":  # pragma: no cover
    main()
