import os
import sys


def _one_process(argv: list[str]) -> bool:
    """`--workers 1` (or WORKERS=1): the run fetches on the CLI's own loop, without a pool
    (a rate-limited one starts the forkserver when its pool does)."""
    workers = os.environ.get("WORKERS", "").strip()
    for i, arg in enumerate(argv):  # the last one counts, as for argparse
        if arg == "--workers" and i + 1 < len(argv):
            workers = argv[i + 1]
        elif arg.startswith("--workers="):
            workers = arg.partition("=")[2]
    return workers == "1"


if __name__ == "__main__":
    running = len(sys.argv) > 1 and sys.argv[1] == "run"
    if running and not _one_process(sys.argv[2:]):
        from engine.run.pool import warm_up

        warm_up()  # the forkserver preloads while this process imports the CLI
    from engine.cli import main

    code = main()
    if running:
        # The run is over and its files are closed: skip the interpreter's teardown of pyarrow's,
        # Polars' and pydantic's objects (a noticeable part of a small run), like a process
        # that ends once its work is done.
        import logging

        if code != 0:
            # A failed or interrupted run's objects may sit in reference cycles (exceptions and
            # their frames) holding multiprocessing semaphores: free them here, or the resource
            # tracker would report them leaked - os._exit runs no finalizer.
            import gc

            gc.collect()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
