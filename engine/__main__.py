import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        from engine.run.pool import warm_up

        warm_up()  # the forkserver preloads while this process imports the CLI
    from engine.cli import main

    sys.exit(main())
