#!/usr/bin/env python3
"""The machine code of the CUDA kernels, compiled without a GPU, and its differences.

A refactoring of ``src/spdnn/engines/cuda/kernels`` that leaves every instance's SASS
identical cannot change a result or a timing; one that changes it needs the device.

    python benchmarks/kernel_sass.py dump OUT          # every instance the compile test builds
    python benchmarks/kernel_sass.py compare OLD NEW   # per instance: same / param-offsets / regs / ops / DIFF

``dump`` compiles, for sm_90 with nvcc, each kernel file as the engine builds it
(:func:`spdnn.engines.cuda.compilation.kernel_source`) with the template instances of
``tests/test_cuda_kernels_compile.py`` (its ``CASES`` and general-path names), writes the
cubin's SASS (``cuobjdump -sass``; ``pip install nvidia-cuda-cuobjdump`` where the CUDA
toolkit lacks it, then ``--cuobjdump PATH``) and ptxas' resource lines. ``compare`` keys
instances by their demangled name without the parameter list (``c++filt``), so a changed
signature still pairs up, and reports the closest level at which two dumps agree: the same
text; the same but for kernel-parameter offsets; the same up to register numbering; the
same opcodes; or different. It exits 1 when any instance differs beyond parameter offsets.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]        # this checkout's kernels and test instances
FILES = ("stationary.cu", "layer.cu", "merge.cu", "general.cu")


def _instances() -> dict[str, list[str]]:
    import test_cuda_kernels_compile as t
    from spdnn.engines.cuda.compilation import kernel_instances

    out = {name: sorted({n for case in t.CASES
                         for n in kernel_instances(*case[:5], tail=case[5] if len(case) > 5 else None)
                         .get(name, {}).values()}) for name in FILES[:3]}
    out["general.cu"] = t._general_names("general.cu")
    return out


def dump(out: Path, cuobjdump: str) -> None:
    from spdnn.engines.cuda.compilation import kernel_source

    out.mkdir(parents=True, exist_ok=True)
    for name, instances in _instances().items():
        code = kernel_source(name) + "\n" + "\n".join(
            f"static const void* spdnn_instance_{i} = reinterpret_cast<const void*>(&{n});"
            for i, n in enumerate(instances))
        (out / name).write_text(code)
        cubin = out / (name + ".cubin")
        run = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-cubin", "-Xptxas", "-v", str(out / name),
                              "-o", str(cubin)], capture_output=True, text=True)
        (out / (name + ".ptxas")).write_text(run.stderr)
        if run.returncode:
            sys.exit(f"kernel_sass: nvcc failed on {name}:\n{run.stderr[-3000:]}")
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True)
        (out / (name + ".sass")).write_text(sass.stdout)
        print(f"{name}: {len(instances)} instances", flush=True)


def _functions(path: Path) -> dict[str, list[str]]:
    """{demangled name without parameters: [instructions]} of a cuobjdump listing."""
    found, current = {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            found[current] = []
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4}\*/\s+(.*?)\s*;?\s*/\*", line)
        if current and m:
            found[current].append(m.group(1).rstrip(" ;"))
    names = list(found)
    demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                               check=True).stdout.split("\n")[:len(names)]
    return {re.sub(r"\(.*\)$", "", d.strip()): found[n] for n, d in zip(names, demangled)}


def _params(i: str) -> str:
    return re.sub(r"c\[0x0\]\[0x[0-9a-f]+\]", "c[0x0][#]", i)


def _registers(i: str) -> str:
    return re.sub(r"\b(U?R|U?P|B)\d+\b", lambda m: re.sub(r"\d+", "#", m.group(0)), _params(i))


def _opcode(i: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", i).split()[0]


def compare(old: Path, new: Path) -> int:
    counts: dict[str, int] = {}
    for name in FILES:
        a, b = _functions(old / (name + ".sass")), _functions(new / (name + ".sass"))
        if set(a) != set(b):
            print(f"{name}: instances differ: {sorted(set(a) ^ set(b))[:4]}")
            counts["DIFF"] = counts.get("DIFF", 0) + 1
        for key in sorted(set(a) & set(b)):
            x, y = a[key], b[key]
            level = ("same" if x == y else "param-offsets" if list(map(_params, x)) == list(map(_params, y))
                     else "regs" if list(map(_registers, x)) == list(map(_registers, y))
                     else "ops" if list(map(_opcode, x)) == list(map(_opcode, y)) else "DIFF")
            counts[level] = counts.get(level, 0) + 1
            print(f"{name:14s} {level:13s} {len(x):6d} {len(y):6d} {key[:100]}")
    print(counts)
    return 0 if set(counts) <= {"same", "param-offsets"} else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="compile every instance and write its SASS to OUT")
    d.add_argument("out", type=Path)
    d.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    c = sub.add_parser("compare", help="compare two dumps instance by instance")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = p.parse_args()
    if args.command == "dump":
        dump(args.out, args.cuobjdump)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
