"""The tests' own secret checks: they find a secret in its escaped forms and never print it."""

import base64
import json

import pytest

from tests.secret_checks import assert_has_secret, assert_no_secret, find_leaks

SECRET = "Pa\\ss & w!rd $'\"% ,x"


@pytest.mark.parametrize("text", [SECRET, json.dumps({"password": SECRET}), repr(SECRET)])
def test_a_leak_in_any_form_fails_without_showing_the_secret(text):
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_no_secret("before " + text + " after", SECRET, "the log")
    assert str(failed.value) == "a secret (%d characters) reached the log" % len(SECRET)


def test_clean_text_passes():
    assert_no_secret("password=<hidden>", SECRET, "the log")


def test_a_missing_expected_secret_fails_without_showing_it():
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_has_secret("password=other", SECRET, "the credentials file")
    assert SECRET not in str(failed.value) and "the credentials file" in str(failed.value)
    assert_has_secret("password=" + SECRET + "\n", SECRET, "the credentials file")


@pytest.mark.parametrize("encode", [str, json.dumps, lambda s: base64.b64encode(s.encode()).decode()])
def test_a_short_secret_is_found_in_every_form(encode):
    short = 'k"7\\q'  # five characters: the scan once ignored forms shorter than eight
    with pytest.raises(pytest.fail.Exception):
        assert_no_secret("x " + encode(short) + " y", short, "the log")
    assert find_leaks([("log", "x " + encode(short) + " y"), ("clean", "nothing here")], {"short": short}) == [
        ("log", "short")]
