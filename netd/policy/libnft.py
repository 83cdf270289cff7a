"""A long-lived libnftables context (libnftables.so.1 through ctypes).

Why not `nft -f -` per change: each run is a new process (start-up, library load, a
fresh context) before it applies a few lines. A context kept for the process life saves
that; it does not save libnftables' read-back of the ruleset before each transaction
(a commit changes the ruleset generation, which invalidates its cache), so netd's
tables are shaped to keep that read small (docs/policy.md).

Why ctypes here and not the python3-nftables module: that module is the same thin
ctypes wrapper over the same six calls, shipped only as a Debian package for the
system Python (netd runs from a venv), and its PyPI copies are third-party snapshots.
pyroute2's nftables support builds netlink messages object by object and has no
parser for nft's rule language, which netd renders. libnftables1 is installed with
the `nft` tool itself, so this adds no dependency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from netd.errors import DatapathError

LIBRARY = "libnftables.so.1"


class Libnft:
    """One nft context; `run(text)` is one transaction (all or nothing), like `nft -f`."""

    def __init__(self, library: str = LIBRARY) -> None:
        try:
            lib = ctypes.CDLL(library, use_errno=True)
        except OSError as exc:
            raise DatapathError(f"cannot load {library} (install libnftables1): {exc}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._lock = threading.Lock()
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise DatapathError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)

    def run(self, text: str, *, json_output: bool = False) -> str:
        """Run nft commands; their output. Raises DatapathError with nft's message."""
        with self._lock:
            if self._ctx is None:
                raise DatapathError("the nftables context is closed")
            self._lib.nft_ctx_output_set_flags(self._ctx, 1 << 4 if json_output else 0)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise DatapathError(f"nft refused the policy: {err.strip()[:500]}")
        return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None
