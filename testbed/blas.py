"""Give MLX's Linux CPU backend an optimized BLAS.

The `mlx[cpu]` wheel links a reference BLAS (~4 GFLOP/s for fp32 matmul). MLX resolves
`cblas_sgemm` & co. when `mlx.core` is first imported, so a BLAS loaded into the process
*before* that import with RTLD_GLOBAL takes over (~40x faster here). We try, in order:
a BLAS already preloaded (LD_PRELOAD), the system OpenBLAS, and PyPI's `scipy-openblas32`
(a dependency on Linux), whose symbols carry a `scipy_` prefix and so get a three-function
shim compiled once into the user cache. Set TESTBED_BLAS=reference to skip all of this.

`activate()` must run before anything imports `mlx.core`; `testbed/__init__.py` calls it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_SHIM_SOURCE = """
/* Forward the three CBLAS calls MLX makes to scipy-openblas32's prefixed symbols. */
#define GEMM_ARGS(T, S) int o, int ta, int tb, int m, int n, int k, S alpha, const T *a, int lda, \\
                        const T *b, int ldb, S beta, T *c, int ldc
#define GEMM_CALL o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc
void scipy_cblas_sgemm(GEMM_ARGS(float, float));
void scipy_cblas_dgemm(GEMM_ARGS(double, double));
void scipy_cblas_cgemm(GEMM_ARGS(void, const void *));
void cblas_sgemm(GEMM_ARGS(float, float)) { scipy_cblas_sgemm(GEMM_CALL); }
void cblas_dgemm(GEMM_ARGS(double, double)) { scipy_cblas_dgemm(GEMM_CALL); }
void cblas_cgemm(GEMM_ARGS(void, const void *)) { scipy_cblas_cgemm(GEMM_CALL); }
"""

_status: str | None = None
_handles: list = []  # keep loaded libraries alive


def status() -> str:
    """Which BLAS MLX's CPU backend uses in this process (for run metadata)."""
    return _status or "unknown (testbed.blas.activate() was not called before mlx.core)"


def activate() -> str:
    global _status
    if _status is not None:
        return _status
    if sys.platform != "linux":
        _status = "platform default (Accelerate on macOS)"
    elif "mlx.core" in sys.modules:
        _status = "reference BLAS (mlx.core was imported before testbed.blas.activate())"
    elif os.environ.get("TESTBED_BLAS", "").lower() in ("reference", "off", "0"):
        _status = "reference BLAS (TESTBED_BLAS=reference)"
    else:
        _status = _try_preloaded() or _try_system() or _try_scipy_openblas() or (
            "reference BLAS (slow: no OpenBLAS found; install scipy-openblas32 and a C compiler, "
            "or libopenblas0)")
    return _status


def _try_preloaded() -> str | None:
    pre = os.environ.get("LD_PRELOAD", "")
    if "blas" in pre.lower() or "mkl" in pre.lower():
        return f"preloaded ({pre})"
    return None


def _try_system() -> str | None:
    for name in ("openblas", "openblasp-r0.3"):
        path = ctypes.util.find_library(name)
        if path:
            try:
                _handles.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
                return f"OpenBLAS ({path})"
            except OSError:
                continue
    return None


def _try_scipy_openblas() -> str | None:
    try:
        import scipy_openblas32
    except ImportError:
        return None
    libdir = Path(scipy_openblas32.get_lib_dir())
    libs = sorted(libdir.glob("libscipy_openblas*.so*"))
    if not libs:
        return None
    try:
        _handles.append(ctypes.CDLL(str(libs[0]), mode=ctypes.RTLD_GLOBAL))
        shim = _build_shim(libs[0])
        if shim is None:
            return None
        _handles.append(ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL))
    except OSError:
        return None
    return f"OpenBLAS (scipy-openblas32 {scipy_openblas32.__version__} via {shim.name})"


def _build_shim(openblas: Path) -> Path | None:
    key = hashlib.sha256((_SHIM_SOURCE + str(openblas)).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "testbed"
    shim = cache / f"cblas_shim_{key}.so"
    if shim.exists():
        return shim
    cc = os.environ.get("CC", "cc")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "shim.c"
            src.write_text(_SHIM_SOURCE)
            out = Path(tmp) / shim.name
            subprocess.run([cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(out),
                            f"-L{openblas.parent}", f"-l:{openblas.name}",
                            f"-Wl,-rpath,{openblas.parent}"],
                           check=True, capture_output=True, timeout=120)
            os.replace(out, shim)  # atomic: parallel test workers may race here
    except (OSError, subprocess.SubprocessError):
        return None
    return shim


def set_threads(n: int) -> bool:
    """Set the number of threads of the loaded OpenBLAS at run time (its environment
    variables are read only when it loads). False when no OpenBLAS is loaded."""
    for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads"):
        fn = _global_symbol(name)
        if fn is not None:
            fn.argtypes = [ctypes.c_int]
            fn(int(n))
            return True
    return False


def threads() -> int | None:
    """The loaded OpenBLAS's thread count (None when no OpenBLAS is loaded)."""
    for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads"):
        fn = _global_symbol(name)
        if fn is not None:
            fn.restype = ctypes.c_int
            return int(fn())
    return None


def _global_symbol(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
