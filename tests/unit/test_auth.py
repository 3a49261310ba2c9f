"""Unit tests of graph/entry/auth.py: key sources, Bearer parsing, key ids, per-key rates."""

from __future__ import annotations

import pytest

from graph.entry.auth import ApiKeys, AuthConfig, Caller, RateLimited, Unauthorized
from graph.errors import ConfigError

ALICE, BOB = "alice-secret-0123456789", "b0b-secret-0123456789xyz"


def keys(**cfg) -> ApiKeys:
    return ApiKeys(AuthConfig(keys_env="TEST_KEYS", **cfg), environ={"TEST_KEYS": f"alice:{ALICE}, {BOB}"})


def test_keys_off_lets_everyone_in_anonymously():
    off = ApiKeys(AuthConfig())
    assert not off.enabled and off.authenticate(None) == Caller(key_id=None)


def test_each_key_has_its_name_or_a_hash():
    k = keys()
    assert k.authenticate(f"Bearer {ALICE}").key_id == "alice"
    bob = k.authenticate(f"bearer {BOB}").key_id
    assert bob and bob != "alice" and BOB not in bob  # a bare key is named by a hash, never by itself


@pytest.mark.parametrize("header", [None, "", ALICE, f"Basic {ALICE}", "Bearer ", f"Bearer {ALICE}x", "Bearer nope"])
def test_missing_or_wrong_key_is_401_naming_the_header(header):
    with pytest.raises(Unauthorized) as err:
        keys().authenticate(header)
    assert err.value.status == 401 and err.value.field == "authorization"


def test_configured_but_missing_keys_fail_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="TEST_KEYS"):
        ApiKeys(AuthConfig(keys_env="TEST_KEYS"), environ={})
    with pytest.raises(ConfigError, match="not a file"):
        ApiKeys(AuthConfig(keys_file=str(tmp_path / "none")))
    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n")
    with pytest.raises(ConfigError, match="none was found"):
        ApiKeys(AuthConfig(keys_file=str(empty)))
    with pytest.raises(ConfigError, match="at least 16"):
        ApiKeys(AuthConfig(keys_env="K"), environ={"K": "short"})


def test_keys_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# team keys\nalice:{ALICE}\n\n")
    assert ApiKeys(AuthConfig(keys_file=str(f))).authenticate(f"Bearer {ALICE}").key_id == "alice"


def test_open_paths():
    k = keys(open_paths=["/livez", "/static/*"])
    assert k.is_open("/livez") and k.is_open("/static/app.js")
    assert not k.is_open("/generate") and not k.is_open("/livez/x")


def test_request_rate_per_key():
    k = keys(requests_per_minute=2)
    alice, bob = Caller(key_id="alice"), Caller(key_id="bob")
    k.admit(alice, now=0.0)
    k.admit(alice, now=1.0)
    with pytest.raises(RateLimited) as err:
        k.admit(alice, now=2.0)
    assert err.value.status == 429 and err.value.retry_after_s == 58
    k.admit(bob, now=2.0)  # another key's budget is its own
    k.admit(alice, now=60.5)  # the first request left the window


def test_token_rate_charges_after_the_fact():
    k = keys(tokens_per_minute=100)
    alice = Caller(key_id="alice")
    k.admit(alice, now=0.0)
    k.charge(alice, 150, now=1.0)  # one request may overrun; the next one pays
    with pytest.raises(RateLimited, match="generated tokens"):
        k.admit(alice, now=2.0)


def test_rates_need_keys():
    with pytest.raises(ValueError, match="rates are per key"):
        AuthConfig(requests_per_minute=10)
