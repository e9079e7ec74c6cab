"""Subject code for memory states a /proc audit cannot see."""
from __future__ import annotations

# A shared file mapping of {path} whose first page is remapped nonlinearly; ready() says where.
REMAPPED_PAGES = """
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
backing = open({path!r}, 'w+b'); backing.truncate(8192)
address = libc.mmap(None, 8192, 3, 1, backing.fileno(), 0)  # PROT_READ|PROT_WRITE, MAP_SHARED
def remap():
    if libc.syscall(216, ctypes.c_void_p(address), ctypes.c_size_t(4096), 0, ctypes.c_size_t(1), 0):
        raise OSError(ctypes.get_errno(), 'remap_file_pages')
make(remap)
ready(hex(address))
"""
