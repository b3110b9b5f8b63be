"""pageferry's engine: a job spec in, a result file out.

The pipeline, one subpackage per stage:

    spec/     validate the JSON spec, resolve ${NAME} secrets, redact
    plan/     fan-out units, pagination styles, the scheduler that cuts work into pieces
    fetch/    one page at a time: HTTP client and its policy, retries, rate limit, auth, records
    run/      the coordinator, its process pool, the pool-side worker, progress
    export/   shards -> reduce -> shaping -> csv/json/ndjson/xlsx/parquet/zip
    deliver/  copies to S3/FTP, the webhook

This module is the public surface the CLI and the service use. Names are loaded on first
use, so importing `engine` stays light (the coordinator never imports pyarrow or Polars).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # running jobs
    "Engine": "engine.run.engine",
    "JobHandle": "engine.run.engine",
    "new_job_id": "engine.run.engine",
    "JobOptions": "engine.run.coordinator",
    "JobResult": "engine.run.coordinator",
    "WorkdirMismatch": "engine.run.coordinator",
    # the spec
    "JobSpec": "engine.spec.models",
    "Source": "engine.spec.models",
    "COLUMN_TYPES": "engine.spec.models",
    "parse_spec": "engine.spec.models",
    "spec_to_json": "engine.spec.models",
    "output_order": "engine.spec.shaping_rules",
    "PreparedJob": "engine.spec.prepare",
    "prepare": "engine.spec.prepare",
    "MASK": "engine.spec.redact",
    "Redactor": "engine.spec.redact",
    "env_references": "engine.spec.redact",
    "resolve": "engine.spec.redact",
    "SecretNames": "engine.spec.redact",
    "service_secret_names": "engine.spec.redact",
    # where a job may connect (ALLOWED_SOURCE_HOSTS; the service: public addresses only by default)
    "OutboundPolicy": "engine.fetch.outbound",
    "outbound_policy": "engine.fetch.outbound",
    # errors
    "FieldError": "engine.errors",
    "SpecError": "engine.errors",
    "JobFailed": "engine.errors",
    "JobCancelled": "engine.errors",
    # the webhook (the service sends it from its own outbox)
    "webhook_body": ("engine.deliver.webhook", "body_of"),
    "webhook_delay": ("engine.deliver.webhook", "delay_before"),
    "webhook_send_once": ("engine.deliver.webhook", "send_once"),
    "post_webhook": "engine.deliver.webhook",
    # incremental loading: the state the service keeps per profile and job name
    "has_incremental": "engine.run.incremental",
    "merge_incremental_states": ("engine.run.incremental", "merge_states"),
    "incremental_state_of": ("engine.run.incremental", "of_spec"),
    # page 1 of each source, nothing written (`python -m engine preview`, POST /preview)
    "run_preview": "engine.preview",
    "preview_spec_document": ("engine.preview", "as_job_document"),
    # RESULT_STORE: the shared copy of shards, uploads and results (engine/storage)
    "ResultStore": "engine.storage",
    "ResultStoreError": "engine.storage",
    "StoredObject": "engine.storage",
    "result_store_for": "engine.storage",
    "result_path": "engine.storage",
    "work_path": "engine.storage",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        target = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'engine' has no attribute {name!r}") from None
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # what type checkers and editors see
    from engine.deliver.webhook import body_of as webhook_body
    from engine.deliver.webhook import delay_before as webhook_delay
    from engine.deliver.webhook import post_webhook
    from engine.deliver.webhook import send_once as webhook_send_once
    from engine.errors import FieldError, JobCancelled, JobFailed, SpecError
    from engine.fetch.outbound import OutboundPolicy, outbound_policy
    from engine.preview import as_job_document as preview_spec_document
    from engine.preview import run_preview
    from engine.run.coordinator import JobOptions, JobResult, WorkdirMismatch
    from engine.run.engine import Engine, JobHandle, new_job_id
    from engine.run.incremental import has_incremental
    from engine.run.incremental import merge_states as merge_incremental_states
    from engine.run.incremental import of_spec as incremental_state_of
    from engine.spec.models import COLUMN_TYPES, JobSpec, Source, parse_spec, spec_to_json
    from engine.spec.prepare import PreparedJob, prepare
    from engine.spec.redact import MASK, Redactor, SecretNames, env_references, resolve, service_secret_names
    from engine.spec.shaping_rules import output_order
    from engine.storage import ResultStore, ResultStoreError, StoredObject, result_path, result_store_for, work_path
