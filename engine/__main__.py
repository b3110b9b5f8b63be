import sys

if __name__ == "__main__":
    running = len(sys.argv) > 1 and sys.argv[1] == "run"
    if running:
        from engine.run.pool import warm_up

        warm_up()  # the forkserver preloads while this process imports the CLI
    from engine.cli import main

    code = main()
    if running:
        # The run is over and its files are closed: skip the interpreter's teardown of pyarrow's,
        # Polars' and pydantic's objects (a noticeable part of a small run), like a process
        # that ends once its work is done.
        import logging
        import os

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
