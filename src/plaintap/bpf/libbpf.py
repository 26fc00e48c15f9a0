"""ctypes bindings for the parts of libbpf.so.1 that plaintap uses.

This package (`plaintap.bpf`) is the only code that touches libbpf; everything above it
gets plain `bytes` and ints. The PyPI bindings cannot attach uprobes or read ring
buffers, so this thin layer is written against libbpf's stable C API (libbpf >= 1.0:
functions return NULL / negative errno, errno is set).

libbpf's own messages (verifier logs included) are routed to the `plaintap.libbpf`
logger instead of raw stderr, so they only show up at `--log-level debug` or when a load
fails.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("plaintap.libbpf")


class BpfError(RuntimeError):
    """A libbpf operation failed; the message is one line for a person to act on."""


c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
c_size_t = ctypes.c_size_t
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)


class ObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf 1.1 layout, `sz` makes it forward compatible)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_char_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts (libbpf 1.1 layout)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", c_char_p),
    ]


PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
RINGBUF_SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

_SIGNATURES = {
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, ctypes.POINTER(ObjectOpenOpts)]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
    "bpf_program__autoload": (ctypes.c_bool, [c_void_p]),
    "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_int]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_uprobe_opts": (
        c_void_p, [c_void_p, c_int, c_char_p, c_size_t, ctypes.POINTER(UprobeOpts)]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, ctypes.c_uint32]),
    "bpf_map__max_entries": (ctypes.c_uint32, [c_void_p]),
    "bpf_map__value_size": (ctypes.c_uint32, [c_void_p]),
    "bpf_map__key_size": (ctypes.c_uint32, [c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "ring_buffer__new": (c_void_p, [c_int, RINGBUF_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__add": (c_int, [c_void_p, c_int, RINGBUF_SAMPLE_FN, c_void_p]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
}


class _Lib:
    """Lazily loaded libbpf.so.1 with typed functions; `lib.errno()` reads errno."""

    def __init__(self) -> None:
        self._cdll: ctypes.CDLL | None = None
        self._pydll: ctypes.PyDLL | None = None
        self._print_cb = None
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        self.recent_messages: list[str] = []

    def _load(self) -> ctypes.CDLL:
        if self._cdll is not None:
            return self._cdll
        name = "libbpf.so.1"
        try:
            cdll = ctypes.CDLL(name, use_errno=True)
        except OSError:
            found = ctypes.util.find_library("bpf")
            if not found:
                raise BpfError("libbpf.so.1 not found: install it with `apt-get install -y libbpf1`") from None
            cdll = ctypes.CDLL(found, use_errno=True)
        for fname, (res, args) in _SIGNATURES.items():
            fn = getattr(cdll, fname)
            fn.restype = res
            fn.argtypes = args
        self._cdll = cdll
        self._install_print()
        return cdll

    def _install_print(self) -> None:
        buf = ctypes.create_string_buffer(4096)
        levels = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}

        def _print(level: int, fmt: bytes, va: int) -> int:
            try:
                n = self._libc.vsnprintf(buf, len(buf), fmt, va)
                msg = buf.raw[: max(0, min(n, len(buf) - 1))].decode("utf-8", "replace").rstrip()
                # Keep the last lines so a failed load can show the verifier's reason.
                self.recent_messages.append(msg)
                del self.recent_messages[:-200]
                # libbpf warnings are mostly benign probing; they matter only in debug.
                log.log(logging.DEBUG if levels.get(level) != logging.WARNING else logging.DEBUG, "%s", msg)
            except Exception:  # never let a callback raise into C
                pass
            return 0

        self._print_cb = PRINT_FN(_print)
        self._cdll.libbpf_set_print(self._print_cb)

    def __getattr__(self, name: str):
        return getattr(self._load(), name)

    def gil_held(self, name: str):
        """Function `name` called without releasing the GIL (ctypes.PyDLL). For short
        calls made in a burst from a thread other than the capture loop's (attaching a
        file's uprobes): released around each call, the GIL comes back only after the
        capture thread's switch interval, up to 5 ms per call."""
        cdll = self._load()
        if self._pydll is None:
            self._pydll = ctypes.PyDLL(cdll._name, use_errno=True)
        fn = getattr(self._pydll, name)
        fn.restype, fn.argtypes = _SIGNATURES[name]
        return fn

    @staticmethod
    def errno() -> int:
        return ctypes.get_errno()

    def bpf(self, cmd: int, attr: ctypes.Array) -> int:
        """The raw bpf(2) system call (for what libbpf 1.1 cannot do: uprobe_multi
        links). Returns its result (-1 with errno set on failure); releases the GIL."""
        return self._libc.syscall(SYS_BPF, ctypes.c_long(cmd), attr, ctypes.c_uint(len(attr)))


lib = _Lib()


def check(ret: int, what: str) -> int:
    """Raise BpfError for a negative libbpf return value."""
    if ret < 0:
        raise BpfError(f"{what} failed: {os.strerror(-ret)}")
    return ret
