"""Stored inputs and configuration, per profile (`X-Profile`): the seed's API for building a
job spec step by step; POST /start without a body runs what is stored."""

from __future__ import annotations

from flask import Blueprint, jsonify

from engine import FieldError, SpecError, parse_spec
from service import profiles
from service.auth import require_token
from service.errors import ApiError, invalid
from service.limits import check_spec_size
from service.routes.common import json_body, profile_name, services
from service.views.detail import redacted_spec

profiles_bp = Blueprint("profiles", __name__, url_prefix="/api/export")
profiles_bp.before_request(require_token)


@profiles_bp.post("/inputs")
def add_input():
    try:
        item = profiles.check_input(json_body())
    except SpecError as exc:
        raise invalid(exc) from None
    stored = services().store.update_profile(
        profile_name(), lambda p: _stored_size_ok({**p, "inputs": profiles.upsert_inputs(p["inputs"], [item])})
    )
    return jsonify({"input": item, "inputs": profiles.in_output_order(stored["inputs"])})


@profiles_bp.post("/bulk-inputs")
def add_inputs():
    body = json_body()
    items = body.get("inputs") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ApiError(
            400,
            'send a list of inputs, or {"inputs": [...]}',
            "validation_error",
            [{"field": "inputs", "message": "must be a list"}],
        )
    checked, problems = [], []
    for i, item in enumerate(items):
        try:
            checked.append(profiles.check_input(item, f"inputs.{i}"))
        except SpecError as exc:
            problems.extend(exc.details)
    names = [item["name"] for item in checked]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(FieldError(f"inputs.{i}.name", f"duplicate input name {name!r}"))
    if problems:
        raise invalid(SpecError(problems))
    stored = services().store.update_profile(
        profile_name(), lambda p: _stored_size_ok({**p, "inputs": profiles.upsert_inputs(p["inputs"], checked)})
    )
    return jsonify({"inputs": profiles.in_output_order(stored["inputs"])})


@profiles_bp.get("/inputs-list")
def list_inputs():
    return jsonify({"inputs": profiles.in_output_order(services().store.profile(profile_name())["inputs"])})


@profiles_bp.delete("/inputs-clear")
def clear_inputs():
    before = services().store.profile(profile_name())["inputs"]
    services().store.update_profile(profile_name(), lambda p: {**p, "inputs": []})
    return jsonify({"inputs": [], "cleared": len(before)})


def _check_configuration(config: dict, inputs: list) -> None:
    """Validate what is configured so far (a source may still be missing)."""
    document = profiles.spec_from_profile({"configuration": config, "inputs": inputs}, require_source=False)
    sources = document.setdefault("sources", [{}])
    if len(sources) == 1 and isinstance(sources[0], dict):
        sources[0].setdefault("url", "http://placeholder.invalid/")  # the URL may come later
    try:
        parse_spec(document)
    except SpecError as exc:
        raise invalid(exc, profiles.seed_path) from None


def _stored_size_ok(profile: dict) -> dict:
    """413 when a profile (configuration and inputs: what /start turns into a spec) would be
    stored over MAX_SPEC_BYTES; checked inside the update, so nothing is written then."""
    check_spec_size(profile, services().settings.max_spec_bytes, "configuration")
    return profile


@profiles_bp.post("/configure")
def configure():
    change = json_body()
    name = profile_name()
    check_spec_size(change, services().settings.max_spec_bytes, "configuration")

    def apply(current):
        try:
            merged = profiles.merge_configuration(current["configuration"], change)
        except SpecError as exc:
            raise invalid(exc) from None
        _check_configuration(merged, current["inputs"])
        return _stored_size_ok({**current, "configuration": merged})

    stored = services().store.update_profile(name, apply)
    return jsonify({"configuration": redacted_spec(stored["configuration"])})


@profiles_bp.get("/configure")
def show_configuration():
    """The stored configuration, redacted like /detail: literal secrets read `***`, shape kept."""
    return jsonify({"configuration": redacted_spec(services().store.profile(profile_name())["configuration"])})
