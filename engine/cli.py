"""`python -m engine run|validate|preview`: the command line over the engine (docs/cli.md). stdout
carries exactly one line, the JSON summary, so scripts can parse it; progress and logs go to
stderr. Exit codes: 0 completed (and every delivery and the webhook succeeded), 1 failed, 2
invalid spec or command line, 3 the result was written but a delivery target or the webhook
finally failed (the summary's `deliveries` / `webhook` name it), 130 interrupted (143 on
SIGTERM); an interrupted run keeps its work directory for `--resume`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from engine.errors import FieldError, JobCancelled, JobFailed, SpecError

# The rest of the engine (pydantic and the spec models, the coordinator, the pool) is imported
# by the command that needs it, not here: `--help` and a bad command line answer at once,
# `validate` and `preview` never load the coordinator.

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_UNDELIVERED = 3  # the result was written; a delivery target or the webhook failed
BUDGET_DIR = Path(".pageferry") / "budgets"  # rate_limit.budget files: shared by the runs in this directory


def _emit(summary: dict) -> None:
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    sys.stdout.flush()


def _read_spec(path: str):
    """The spec document and the directory relative paths (ids.file) are taken from."""
    try:
        if path == "-":
            raw, base = sys.stdin.buffer.read(), Path.cwd()
        else:
            raw, base = Path(path).read_bytes(), Path(path).resolve().parent
    except OSError as exc:
        raise SpecError([FieldError("spec", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        return orjson.loads(raw), base
    except orjson.JSONDecodeError as exc:
        raise SpecError([FieldError("spec", f"not valid JSON: {exc}")]) from None


def _with_webhook(prepared, summary: dict, job_id: str, policy) -> dict:
    """POST the summary to the spec's webhook (completed and failed runs; an interrupted run is
    not over - `--resume` continues it) and add the outcome to the printed summary."""
    webhook = prepared.resolved.webhook
    if webhook is None:
        return summary
    from engine import post_webhook

    try:
        outcome = post_webhook(webhook, summary, prepared.redactor, task_id=job_id, policy=policy)
    except KeyboardInterrupt:
        outcome = {"delivered": False, "attempts": None, "error": "interrupted"}
    if not outcome["delivered"]:
        print(f"webhook not delivered ({outcome['attempts']} attempts): {outcome['error']}", file=sys.stderr)
    return {**summary, "webhook": outcome}


def _invalid(exc: SpecError, quiet: bool = False) -> int:
    for detail in exc.details:
        print(f"invalid spec: {detail.field}: {detail.message}", file=sys.stderr)
    _emit({"status": "invalid", "error": str(exc), "details": [d.as_dict() for d in exc.details]})
    return EXIT_INVALID


def _output_path(out: str | None, filename: str) -> Path:
    if out is None:
        return Path.cwd() / filename
    path = Path(out)
    return path / filename if path.is_dir() else path


def _save_state(path: Path | None, spec, state: dict | None) -> tuple[dict | None, str | None]:
    """A completed run's incremental state, saved to `path` (the summary's `state`), and why it
    could not be saved (None when it was)."""
    if path is None or state is None:
        return None, None
    from engine.run.incremental import save_after_run

    try:
        return save_after_run(path, spec, state), None
    except OSError as exc:
        message = f"cannot save the incremental state to {path}: {exc.strerror or exc}"
        print(message, file=sys.stderr)
        return state, message


def _check_output_location(output: Path) -> None:
    """Refuse an output nobody can write before anything is fetched (not after an hour)."""
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError([FieldError("--output", f"cannot create the folder {folder}: {exc.strerror or exc}")]) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError([FieldError("--output", f"the folder {folder} is not writable")])
    if output.is_dir():
        raise SpecError([FieldError("--output", f"{output} is a directory")])


def _prepare_cli(spec_arg: str, as_document=lambda document: document):
    """Settings, the spec read and checked as `run` would: (settings, policy, prepared), or the
    exit code after the error was reported."""
    from config import load_settings
    from config.settings import SettingsError
    from engine import outbound_policy, parse_spec, prepare

    try:
        settings = load_settings()
        document, base = _read_spec(spec_arg)
        spec = parse_spec(as_document(document))
        policy = outbound_policy(settings, service=False)
        return settings, policy, prepare(spec, os.environ, policy, base_dir=base)
    except SettingsError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        _emit({"status": "invalid", "error": str(exc)})
        return EXIT_INVALID
    except SpecError as exc:
        return _invalid(exc)


def cmd_validate(args) -> int:
    checked = _prepare_cli(args.spec)
    if isinstance(checked, int):
        return checked
    _, _, prepared = checked
    spec = prepared.spec
    _emit(
        {
            "status": "valid",
            "name": spec.name,
            "sources": len(spec.sources),
            "units": sum(f.count for f in prepared.fanouts),
            "output": spec.output_name,
        }
    )
    return EXIT_OK


def cmd_preview(args) -> int:
    """Page 1 of each source, read as a run would read it (engine/preview.py, docs/preview.md):
    one JSON line; exit 0 when every source answered, 1 when one failed, 2 an invalid spec."""
    from engine.preview import as_job_document, run_preview

    checked = _prepare_cli(args.spec, lambda document: as_job_document(document)[0])
    if isinstance(checked, int):
        return checked
    settings, policy, prepared = checked
    try:
        result = run_preview(prepared, policy, settings.max_file_size)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    for source in result["sources"]:
        if source["status"] == "failed":
            print(f"{source['name']}: failed: {source['error']}", file=sys.stderr)
    _emit(result)
    return EXIT_FAILED if any(s["status"] == "failed" for s in result["sources"]) else EXIT_OK


class _ProgressBar:
    """A tqdm bar on stderr, fed from the job's progress snapshot."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except OSError:
                size = os.terminal_size((0, 0))
            sized = size.columns > 0 and size.lines > 0
            # A terminal that reports no size (a bare pty) still gets a bar.
            self.bar = tqdm(
                total=None,
                unit="page",
                file=sys.stderr,
                leave=True,
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,
            )

    def update(self, progress: dict) -> None:
        if self.bar is None:
            return
        p = progress["progress"]
        if p["pages_total"] is not None and self.bar.total != p["pages_total"]:
            self.bar.total = p["pages_total"]
        self.bar.n = p["pages_done"]
        self.bar.set_description(progress["phase"], refresh=False)
        self.bar.set_postfix(rows=p["rows"], req_s=p["rate"], retries=p["retries"], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_run(args) -> int:
    import logging

    from config import load_settings
    from config.settings import SettingsError
    from engine import outbound_policy, parse_spec, prepare

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        _emit({"status": "invalid", "error": str(exc)})
        return EXIT_INVALID
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        document, base = _read_spec(args.spec)
        spec = parse_spec(document)
        prepared = prepare(spec, os.environ, outbound_policy(settings, service=False), base_dir=base)
        if args.workers is not None and args.workers < 1:
            raise SpecError([FieldError("--workers", "must be at least 1")])
        if args.resume is not None and not (Path(args.resume) / "job.json").exists():
            raise SpecError([FieldError("--resume", f"{args.resume} is not a pageferry work directory")])
    except SpecError as exc:
        return _invalid(exc)

    import shutil

    from engine import Engine, WorkdirMismatch, new_job_id
    from engine.run.incremental import load_for_run
    from engine.storage import WorkCopy

    if args.resume:
        import json

        workdir = Path(args.resume)
        job_id = json.loads((workdir / "job.json").read_text()).get("job_id") or new_job_id("run")
    else:
        job_id = new_job_id("run")
        workdir = Path(".pageferry") / "work" / job_id
    output = _output_path(args.output, spec.output_name)
    try:
        _check_output_location(output)
        state_path, saved_state = load_for_run(args.state, spec)  # incremental sources only
    except SpecError as exc:
        return _invalid(exc)
    engine = Engine(settings)
    interrupted = {"signal": None}
    bar = _ProgressBar(sys.stderr.isatty() and not args.quiet)
    started = time.monotonic()
    handle = None
    try:
        options = engine.options(
            job_id, workdir.resolve(), output.resolve(), workers=args.workers, budget_dir=BUDGET_DIR.resolve()
        )
        options.incremental_state = saved_state
        # This process is the user's own: the first pieces and the export run here, and the pool
        # starts only when page 1 shows more work than that.
        options.export_here = options.inline_start = True
        handle = engine.start(prepared, options)

        def on_signal(signum, frame):
            interrupted["signal"] = signum
            handle.cancel("interrupted")

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not handle.wait(0.2):
                bar.update(handle.progress())
            bar.update(handle.progress())
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    finally:
        bar.close()
        engine.close()

    seconds = round(time.monotonic() - started, 3)
    progress = handle.runner.progress()["progress"]
    base_summary = {
        "rows": 0,
        "records": progress["rows"],
        "pages": progress["pages_done"],
        "requests": progress["requests"],
        "retries": progress["retries"],
        "seconds": seconds,
        "output": None,
        "bytes": 0,
        "sha256": None,
        "partial": False,
    }
    error = handle.error
    if error is None:
        result = handle.result
        assert result is not None  # the run ended without an error: it returned its result
        state, state_error = _save_state(state_path, spec, result.state)
        shutil.rmtree(workdir, ignore_errors=True)
        WorkCopy(options.result_store, job_id, workdir).drop()  # RESULT_STORE's copy of the work too
        summary: dict[str, Any] = {
            "status": "completed",
            "rows": result.rows,
            "records": result.records,
            "pages": result.pages,
            "requests": result.requests,
            "retries": result.retries,
            "seconds": seconds,
            "output": str(result.output),
            "bytes": result.bytes,
            "sha256": result.sha256,
            "partial": result.partial,
            "skipped_pages": result.skipped_pages,
        }
        if state is not None:
            summary["state"] = state
        if state_error is not None:
            summary["state_error"] = state_error
        if result.deliveries:
            summary["deliveries"] = result.deliveries
            for failed in (d for d in result.deliveries if not d["ok"]):
                print(f"delivery to {failed['target']} failed: {failed['error']}", file=sys.stderr)
        summary = _with_webhook(prepared, summary, job_id, outbound_policy(settings, service=False))
        _emit(summary)
        undelivered = any(not d["ok"] for d in summary.get("deliveries", ())) or (
            "webhook" in summary and not summary["webhook"]["delivered"]
        )
        if state_error is not None:
            return EXIT_FAILED  # the next run would ask from the old bounds again
        return EXIT_UNDELIVERED if undelivered else EXIT_OK
    if isinstance(error, JobCancelled):
        print(f"interrupted; the work is kept: resume with --resume {workdir}", file=sys.stderr)
        _emit({"status": "interrupted", **base_summary, "error": "interrupted", "workdir": str(workdir)})
        return EXIT_TERMINATED if interrupted["signal"] == signal.SIGTERM else EXIT_INTERRUPTED
    if isinstance(error, WorkdirMismatch):
        return _invalid(SpecError([FieldError("--resume", str(error))]))
    if isinstance(error, SpecError):
        return _invalid(error)
    if isinstance(error, JobFailed):
        message = error.message
    else:
        logging.getLogger("pageferry.cli").error("internal error: %s", type(error).__name__)
        message = f"internal error: {type(error).__name__}"
        message = prepared.redactor.text(f"{message}: {error}")
    print(f"failed: {message}", file=sys.stderr)
    for page in getattr(error, "pages", [])[:20]:
        print(f"  {page.url}: {page.error}", file=sys.stderr)
    summary = {"status": "failed", **base_summary, "error": message, "workdir": str(workdir)}
    failed_pages = getattr(error, "pages", None)
    if failed_pages:
        summary["failed_pages"] = [p.as_dict() for p in failed_pages]
    _emit(_with_webhook(prepared, summary, job_id, outbound_policy(settings, service=False)))
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="pageferry: paginated API → file")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job spec and write its export")
    run.add_argument("spec", help="job spec (JSON file, or - for stdin)")
    run.add_argument("-o", "--output", help="output file, or an existing directory for {filename}.{ext}")
    run.add_argument("--workers", type=int, help="engine processes (default: WORKERS)")
    run.add_argument("--resume", metavar="WORKDIR", help="continue an interrupted run from its work directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--state", metavar="FILE", help="incremental state file (default: .pageferry/state/<name>.json)")
    validate = commands.add_parser("validate", help="check a job spec without fetching")
    validate.add_argument("spec", help="job spec (JSON file, or - for stdin)")
    preview = commands.add_parser("preview", help="fetch page 1 of each source and show what it holds; writes nothing")
    preview.add_argument("spec", help="job spec or one source object (JSON file, or - for stdin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_INVALID if exc.code not in (0, None) else EXIT_OK
    return {"validate": cmd_validate, "preview": cmd_preview}.get(args.command, cmd_run)(args)
