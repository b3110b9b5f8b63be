"""engine/secrets.py: `${NAME}` resolution and redaction (contract §1: secrets show as "***",
redaction keeps the shape)."""

from __future__ import annotations

import base64

import pytest

from engine.errors import SpecError
from engine.spec.models import parse_spec, spec_to_json
from engine.spec.redact import Redactor, env_references, resolve

URL = "https://api.example.com/v1/orders"


def spec_with(**source):
    return parse_spec({"sources": [{"url": URL, **source}]})


# ------------------------------------------------------------------ resolve


def test_whole_value_reference_is_substituted():
    spec = spec_with(auth={"type": "bearer", "token": "${TOKEN}"})
    resolved, _ = resolve(spec, {"TOKEN": "t0ps3cret"})
    assert resolved.sources[0].auth.token == "t0ps3cret"


def test_embedded_references_are_substituted():
    spec = parse_spec(
        {
            "sources": [
                {
                    "url": "https://${HOST}/v1/${KIND}?x=1",
                    "headers": {"X-Tenant": "tenant-${TENANT}-prod"},
                    "params": {"q": "${Q}"},
                }
            ]
        }
    )
    resolved, _ = resolve(spec, {"HOST": "api.example.com", "KIND": "orders", "TENANT": "42", "Q": "open"})
    src = resolved.sources[0]
    assert src.url == "https://api.example.com/v1/orders?x=1"
    assert src.headers == {"X-Tenant": "tenant-42-prod"}
    assert src.params == {"q": "open"}


def test_values_from_the_environment_are_masked_wherever_they_are_used():
    spec = parse_spec({"sources": [{"url": "https://api.example.com/${ACCOUNT}/orders?k=${KEY}"}]})
    _, redactor = resolve(spec, {"ACCOUNT": "acct-778899", "KEY": "plain-key-55"})
    text = redactor.text("GET https://api.example.com/acct-778899/orders?k=plain-key-55 failed")
    assert "acct-778899" not in text and "plain-key-55" not in text


def test_resolved_spec_is_validated_again():
    spec = parse_spec({"sources": [{"url": "${URL}"}]})
    with pytest.raises(SpecError) as info:
        resolve(spec, {"URL": "ftp://nope"})
    assert info.value.details[0].field == "sources.0.url"


def test_missing_variable_names_field_and_variable():
    spec = parse_spec(
        {
            "sources": [{"url": URL, "auth": {"type": "basic", "username": "u", "password": "${PW}"}}],
            "webhook": {"url": "https://hooks.example.com/x", "secret": "${HOOK_SECRET}"},
        }
    )
    with pytest.raises(SpecError) as info:
        resolve(spec, {})
    details = [(d.field, d.message) for d in info.value.details]
    assert ("sources.0.auth.password", "environment variable PW is not set") in details
    assert ("webhook.secret", "environment variable HOOK_SECRET is not set") in details
    assert len(details) == 2


def test_env_references():
    spec = parse_spec(
        {
            "sources": [{"url": "https://${HOST}/x", "auth": {"type": "bearer", "token": "${T}"}}],
            "webhook": {"url": "https://h.example.com", "secret": "a${S}b${T}"},
        }
    )
    assert env_references(spec) == {"HOST", "T", "S"}


def test_unresolved_spec_is_what_spec_to_json_keeps():
    spec = spec_with(auth={"type": "bearer", "token": "${TOKEN}"}, headers={"X-Key": "k-${KEY}"})
    resolved, _ = resolve(spec, {"TOKEN": "t0ps3cret", "KEY": "v4lue"})
    kept = spec_to_json(spec)
    assert kept["sources"][0]["auth"] == {"type": "bearer", "token": "${TOKEN}"}
    assert kept["sources"][0]["headers"] == {"X-Key": "k-${KEY}"}
    # resolving does not touch the original
    assert spec.sources[0].auth.token == "${TOKEN}"
    assert "t0ps3cret" not in str(kept)
    assert spec_to_json(resolved)["sources"][0]["auth"]["token"] == "t0ps3cret"


# ------------------------------------------------------------------ Redactor from resolve


def test_resolved_secrets_are_scrubbed_from_text():
    spec = spec_with(auth={"type": "bearer", "token": "${TOKEN}"})
    _, redactor = resolve(spec, {"TOKEN": "t0ps3cret"})
    assert redactor.text("401 with Bearer t0ps3cret!") == "401 with Bearer ***!"
    assert redactor.text("nothing here") == "nothing here"


def test_literal_secrets_count_too():
    spec = parse_spec(
        {
            "sources": [{"url": URL, "auth": {"type": "header", "name": "X-Api-Key", "value": "literal-key-123"}}],
            "webhook": {"url": "https://h.example.com", "secret": "hook-secret"},
        }
    )
    _, redactor = resolve(spec, {})
    assert redactor.text("sent literal-key-123 and hook-secret") == "sent *** and ***"


def test_basic_auth_base64_form_is_masked():
    spec = spec_with(auth={"type": "basic", "username": "alice", "password": "${PW}"})
    _, redactor = resolve(spec, {"PW": "wonderland"})
    encoded = base64.b64encode(b"alice:wonderland").decode()
    assert redactor.text(f"Authorization: Basic {encoded}") == "Authorization: Basic ***"
    assert redactor.text("password wonderland") == "password ***"


def test_query_param_auth_masked_in_urls():
    spec = spec_with(auth={"type": "query", "name": "key", "value": "${KEY}"})
    _, redactor = resolve(spec, {"KEY": "qk-998877"})
    masked = redactor.url(f"{URL}?page=2&key=qk-998877")
    assert "qk-998877" not in masked
    assert "page=2" in masked and "key=***" in masked


@pytest.mark.parametrize(
    "name", ["api_key", "apikey", "access_token", "token", "client_secret", "signature", "password", "Auth"]
)
def test_sensitive_query_params_masked_even_when_not_known(name):
    masked = Redactor().url(f"{URL}?page=3&{name}=whatever123")
    assert "whatever123" not in masked
    assert f"{name}=***" in masked and "page=3" in masked


def test_url_userinfo_password_masked():
    assert Redactor().url("https://bob:hunter22@api.example.com/x") == "https://bob:***@api.example.com/x"


def test_plain_url_untouched():
    assert Redactor().url(f"{URL}?page=3&status=open") == f"{URL}?page=3&status=open"


def test_short_strings_are_not_scrubbed():
    redactor = Redactor({"ab", "abc", "abcd", "", None})
    assert redactor.secrets == frozenset({"abcd"})
    assert redactor.text("ab abc abcd") == "ab abc ***"


def test_longest_secret_wins():
    redactor = Redactor({"secret", "secret-long"})
    assert redactor.text("x secret-long y") == "x *** y"


def test_data_scrubs_every_string():
    redactor = Redactor({"s3cr3t-v"})
    value = {
        "error": {"message": "bad s3cr3t-v", "pages": [{"url": "https://x/?k=s3cr3t-v", "status": 401}]},
        "n": 3,
        "ok": True,
        "none": None,
        "tuple": ("s3cr3t-v",),
    }
    assert redactor.data(value) == {
        "error": {"message": "bad ***", "pages": [{"url": "https://x/?k=***", "status": 401}]},
        "n": 3,
        "ok": True,
        "none": None,
        "tuple": ["***"],
    }


# ------------------------------------------------------------------ Redactor.spec

FULL = {
    "sources": [
        {
            "name": "a",
            "url": URL,
            "headers": {
                "Authorization": "Bearer xyz-123",
                "X-Api-Key": "${K}",
                "Accept": "application/json",
                "Cookie": "sid=1234",
            },
            "params": {"api_key": "p-1234", "status": "open"},
            "auth": {"type": "bearer", "token": "${TOKEN}"},
        },
        {"name": "b", "url": URL, "auth": {"type": "basic", "username": "alice", "password": "pw-1234"}},
        {
            "name": "c",
            "url": URL,
            "auth": {
                "type": "oauth2",
                "token_url": "https://auth.example.com/t",
                "client_id": "cid",
                "client_secret": "cs-1234",
                "scope": "read",
            },
        },
        {"name": "d", "url": URL, "auth": {"type": "header", "name": "X-Key", "value": "hv-1234"}},
        {"name": "e", "url": URL, "auth": {"type": "query", "name": "key", "value": "qv-1234"}},
    ],
    "export": {"format": "zip"},
    "webhook": {"url": "https://hooks.example.com/done", "secret": "${HOOK}"},
    "deliver": [
        {"type": "s3", "url": "s3://bucket/x/", "access_key": "AK-1234", "secret_key": "SK-1234"},
        {"type": "ftp", "host": "ftp.example.com", "username": "me", "password": "fp-1234"},
    ],
}


def test_spec_redaction_keeps_the_shape():
    red = Redactor().spec(spec_to_json(parse_spec(FULL)))
    s = red["sources"]
    assert s[0]["auth"] == {"type": "bearer", "token": "***"}
    assert s[1]["auth"] == {"type": "basic", "username": "alice", "password": "***"}
    assert s[2]["auth"] == {
        "type": "oauth2",
        "token_url": "https://auth.example.com/t",
        "client_id": "cid",
        "client_secret": "***",
        "scope": "read",
    }
    assert s[3]["auth"] == {"type": "header", "name": "X-Key", "value": "***"}
    assert s[4]["auth"] == {"type": "query", "name": "key", "value": "***"}
    assert red["webhook"]["secret"] == "***" and red["webhook"]["url"] == "https://hooks.example.com/done"
    assert red["deliver"][0]["access_key"] == "***" and red["deliver"][0]["secret_key"] == "***"
    assert red["deliver"][1]["password"] == "***" and red["deliver"][1]["username"] == "me"


def test_spec_redaction_masks_sensitive_headers_and_params():
    red = Redactor().spec(spec_to_json(parse_spec(FULL)))["sources"][0]
    assert red["headers"] == {"Authorization": "***", "X-Api-Key": "***", "Accept": "application/json", "Cookie": "***"}
    assert red["params"] == {"api_key": "***", "status": "open"}


def test_spec_redaction_leaves_empty_and_missing_secrets_alone():
    spec = parse_spec({"sources": [{"url": URL}], "deliver": [{"type": "ftp", "host": "h"}]})
    red = Redactor().spec(spec_to_json(spec))
    assert red["deliver"][0]["password"] == ""
    assert red["webhook"] is None
    assert red["sources"][0]["auth"] is None


def test_spec_redaction_scrubs_known_secrets_elsewhere_and_in_urls():
    spec = parse_spec({"sources": [{"url": URL + "?signature=abc&k=kv-5566", "headers": {"X-Note": "uses kv-5566"}}]})
    red = Redactor({"kv-5566"}).spec(spec_to_json(spec))["sources"][0]
    assert "kv-5566" not in red["url"] and "signature=***" in red["url"]
    assert red["headers"]["X-Note"] == "uses ***"


def test_log_lines_mask_the_password_of_a_database_or_redis_url():
    from service.logs import scrub

    line = scrub(
        "store: postgresql://pf:pg-Secret-1@db:5432/pageferry; limiter: redis://:redis-Secret-2@cache:6379/0, "
        "rediss://user:r%40Secret-3@cache/1"
    )
    assert "Secret" not in line
    assert "postgresql://pf:***@db:5432/pageferry" in line and "redis://:***@cache:6379/0" in line
