"""CUDA C++ kernels compiled at run time with NVRTC (cuda-bindings), for what Triton cannot emit
(binary tensor cores). Users need no compiler toolchain: NVRTC ships as a Python wheel. Compiled
modules are cached in memory and, as cubins, on disk (keyed by source, options, GPU and NVRTC)."""

from __future__ import annotations

import ctypes
import hashlib
from functools import cache
from pathlib import Path

import torch

from ...fileio import atomic_path, cache_dir

SOURCE_DIR = Path(__file__).parent


@cache
def nvrtc_available() -> bool:
    """Whether cuda-bindings (NVRTC and the driver API) can be imported."""
    try:
        from cuda.bindings import driver, nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


def _check(result, what: str):
    """cuda-bindings calls return (status, *values): raise on a failed status."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        raise RuntimeError(f"{what} failed: {status!r}")
    return values[0] if len(values) == 1 else values


def compile_cubin(source: str, name: str, options: list[str], arch: str,
                  headers: dict[str, str] | None = None) -> bytes:
    """NVRTC: CUDA C++ source -> cubin for ``arch`` (e.g. "sm_90"), with ``headers`` (include name ->
    text; by default :func:`shared_headers`) for its ``#include "..."``; compile errors come with NVRTC's log."""
    from cuda.bindings import nvrtc

    headers = shared_headers() if headers is None else headers
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), len(headers),
                                           [h.encode() for h in headers.values()],
                                           [n.encode() for n in headers]), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}", "-std=c++17", *options]
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])[0]
        if int(status) != 0:
            size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC could not compile {name} ({' '.join(opts)}):\n{log.decode(errors='replace')}")
        size = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# The few-rows kernels (int4_group.cu, int4_small_m.cu) run one block per 16-row weight tile, whose warps
# take its chunks (int4_group.cu: units of chunks) of K in turn; K is split over blocks too while the tiles
# leave multiprocessors idle.
MIN_SPLIT_ROUNDS = 2  # a split of K over blocks has at least this many rounds of the block's warps


@cache
def launches_early(device: torch.device) -> bool:
    """Whether kernels may be launched while the previous one on the stream runs (programmatic dependent
    launch, Hopper on): such a kernel loads what does not depend on that one (its weights and static scales,
    which no kernel of a forward pass writes), then waits (griddepcontrol.wait) before reading its input."""
    return torch.cuda.get_device_capability(device) >= (9, 0)


@cache
def multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@cache
def shared_memory_per_block(device: torch.device) -> int:
    """The most shared memory (static and dynamic, bytes) a block may ask for on ``device``."""
    from cuda.bindings import driver

    attribute = driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    return _check(driver.cuDeviceGetAttribute(attribute, device.index if device.index is not None else
                                              torch.cuda.current_device()), "shared memory per block")


def split_k(tiles: int, chunks: int, warps: int, device: torch.device, blocks_per_sm: int) -> tuple[int, int]:
    """(chunks per block, splits of K over blocks) for ``tiles`` blocks of ``warps`` warps: K is split,
    in whole rounds of ``warps`` chunks, until the grid has ``blocks_per_sm`` blocks per multiprocessor,
    each split keeping at least MIN_SPLIT_ROUNDS rounds."""
    rounds = -(-chunks // warps)
    want = -(-blocks_per_sm * multiprocessors(device) // tiles)
    splits = max(1, min(want, rounds // MIN_SPLIT_ROUNDS))
    per_split = warps * -(-rounds // splits)
    return per_split, -(-chunks // per_split)


def partial_sums(splits: int, tiles: int, column_tiles: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor | None:
    """The workspace of common.cuh's sum_splits (column_tiles * 4 sums of 32 lanes per block and split);
    None without a split over blocks."""
    return None if splits == 1 else torch.empty(splits * tiles * column_tiles * 128, dtype=dtype, device=device)


def pointer(t: torch.Tensor | None) -> ctypes.c_void_p:
    """A tensor's device address as a kernel argument (None: a null pointer)."""
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def device_arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


class CudaModule:
    """A compiled module's functions on one device, launched on the current torch stream (the caller
    makes the module's device the current one)."""

    def __init__(self, cubin: bytes, device: torch.device):
        from cuda.bindings import driver

        with torch.cuda.device(device):
            torch.empty(1, device=device)  # makes the device's primary context current on this thread
            self._module = _check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        self._functions = {}
        self._dynamic_shared = {}  # name -> the most dynamic shared memory its launches may ask for

    def _function(self, name: str):
        from cuda.bindings import driver

        if name not in self._functions:
            self._functions[name] = _check(driver.cuModuleGetFunction(self._module, name.encode()),
                                           f"cuModuleGetFunction({name})")
        return self._functions[name]

    def blocks_per_sm(self, name: str, block: int, shared: int = 0) -> int:
        """How many blocks of ``block`` threads of kernel ``name`` (``shared`` bytes of dynamic shared
        memory each) a multiprocessor holds at once."""
        from cuda.bindings import driver

        function = self._allow_shared(name, shared)
        return _check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, block, shared),
                      f"occupancy of {name}")

    def _allow_shared(self, name: str, shared: int):
        """The kernel, allowed ``shared`` bytes of dynamic shared memory (beyond the default 48 KiB, a
        kernel has to ask for them first)."""
        from cuda.bindings import driver

        function = self._function(name)
        if shared > self._dynamic_shared.get(name, 0):
            attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            _check(driver.cuFuncSetAttribute(function, attribute, shared), f"allowing {name} {shared} bytes of shared memory")
            self._dynamic_shared[name] = shared
        return function

    def launch(self, name: str, grid: tuple[int, int, int], block: int, args: list, *,
               early: bool = False, shared: int = 0, cooperative: bool = False) -> None:
        """``args``: ctypes values (c_void_p for pointers, c_int, c_float, ...) in the kernel's order.
        ``early`` (Hopper): programmatic dependent launch, the kernel may start before the previous one
        on the stream ends, and waits for it where it says so (griddepcontrol.wait). ``shared``: bytes of
        dynamic shared memory. ``cooperative``: all blocks resident at once (or the launch fails), for
        kernels whose blocks wait for each other."""
        from cuda.bindings import driver

        function = self._allow_shared(name, shared)
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        stream = torch.cuda.current_stream().cuda_stream
        if not (early or cooperative):
            _check(driver.cuLaunchKernel(function, *grid, block, 1, 1, shared, stream,
                                         ctypes.addressof(pointers), 0), f"launching {name}")
            return
        config = driver.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = grid
        config.blockDimX, config.blockDimY, config.blockDimZ = block, 1, 1
        config.sharedMemBytes = shared
        config.hStream = driver.CUstream(stream)
        attrs = []
        if early:
            attr = driver.CUlaunchAttribute()
            attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            attr.value.programmaticStreamSerializationAllowed = 1
            attrs.append(attr)
        if cooperative:
            attr = driver.CUlaunchAttribute()
            attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
            attr.value.cooperative = 1
            attrs.append(attr)
        config.attrs = attrs
        config.numAttrs = len(attrs)
        _check(driver.cuLaunchKernelEx(config, function, ctypes.addressof(pointers), 0),
               f"launching {name}")


_MODULES: dict[tuple, CudaModule] = {}


def shared_headers() -> dict[str, str]:
    """The headers beside the kernels (``*.cuh``), by file name: what their ``#include "..."`` finds."""
    return {p.name: p.read_text() for p in sorted(SOURCE_DIR.glob("*.cuh"))}


def load_module(source_file: str, defines: dict[str, int], device: torch.device) -> CudaModule:
    """The module of ``source_file`` (beside this file) compiled with ``-D`` ``defines`` for ``device``."""
    from cuda.bindings import nvrtc

    arch = device_arch(device)
    options = [f"-D{k}={v}" for k, v in sorted(defines.items())]
    key = (source_file, tuple(options), arch, device.index)
    if key not in _MODULES:
        source, headers = (SOURCE_DIR / source_file).read_text(), shared_headers()
        version = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
        digest = hashlib.sha256(repr((source, sorted(headers.items()), options, arch, version)).encode()).hexdigest()[:16]
        path = cache_dir() / "cubin" / f"{Path(source_file).stem}-{arch}-{digest}.cubin"
        if path.is_file():
            cubin = path.read_bytes()
        else:
            cubin = compile_cubin(source, source_file, options, arch, headers)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(cubin)
        _MODULES[key] = CudaModule(cubin, device)
    return _MODULES[key]
