"""The forkserver's last preload: freeze the garbage collector's view of everything imported.

Every pool process is forked from the forkserver after its preload. Frozen objects sit in
the GC's permanent generation: a child's collections never walk them, so they neither spend
CPU on the preloaded modules' ~60,000 objects nor write to their pages (a GC pass updates
each object's header, which copies the page on write and turns shared memory into private
memory in every child). See `gc.freeze`.
"""
import gc

gc.collect()
gc.freeze()
