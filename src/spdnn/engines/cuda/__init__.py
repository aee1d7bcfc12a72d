"""The CUDA engine (CuPy + CUDA C++ compiled at run time).

Importing this package does not import CuPy; :class:`CudaEngine` does, when used.
Modules: :mod:`.engine` (the engine), :mod:`.layout` (weight packing, plain numpy),
:mod:`.emulate` (a numpy replay of the kernel, for CPU tests), ``kernels/*.cu``.
"""
from .engine import CudaEngine

__all__ = ["CudaEngine"]
