"""The engine hands memory freed while building a snapshot back to the system
(``serving.engine.return_freed_memory``, called by ``settle_heap`` after every load and swap)."""

import subprocess
import sys

PROBE = """
import numpy as np
from pathlib import Path
from nextbest.serving.engine import return_freed_memory

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

blocks = [np.ones(8192) for _ in range(5000)]  # 5,000 x 64 KB, below malloc's mmap threshold
keep = blocks[-1]  # the top of the heap stays in use, so free() alone cannot shrink it
del blocks
before = rss()
return_freed_memory()
print((before - rss()) / 2**20)
"""


def test_freed_heap_memory_goes_back_to_the_system():
    # a fresh process: the test runner's own heap does not enter the figure
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    returned_mib = float(out.stdout.strip().splitlines()[-1])
    assert returned_mib > 200, returned_mib  # of the ~312 MiB freed
