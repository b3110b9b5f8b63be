"""The forkserver's last preload: `gc.freeze()` everything imported. Pool processes forked
from it then never walk those objects in a GC pass nor write to their pages (a GC pass updates
each object's header, which copies the page on write and turns shared memory into private).
"""

import gc

gc.collect()
gc.freeze()
