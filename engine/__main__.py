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

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
