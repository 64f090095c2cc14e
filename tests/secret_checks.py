"""Secret checks that never print the secret: a failing `assert secret not in text` would show both the
secret and the text in pytest's report, which is exactly the leak being tested for."""

import base64
import json

import pytest


def forms(secret):
    """The ways a secret can appear besides verbatim: JSON- and repr-escaped, base64.

    Every form at every length: a short secret is a secret too (none is shorter than the secret itself, and a
    base64 form is longer, so a form does not match by chance where the secret would not).
    """
    found = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1]}
    raw = secret.encode("utf-8")
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        found.add(encode(raw).decode().rstrip("="))
    return {form for form in found if form}


def find_leaks(haystacks, secrets):
    """[(where, label)] for every secret (``{label: secret}``) found in any form in ``haystacks`` ([(where, text)])."""
    return [(where, label) for where, text in haystacks for label, secret in secrets.items()
            if any(form in text for form in forms(secret))]


def assert_no_secret(text, secret, where):
    """Fail, naming only ``where``, when ``secret`` in any of its forms is in ``text``."""
    __tracebackhide__ = True  # pylint: disable=unused-variable
    if any(form in text for form in forms(secret)):
        pytest.fail("a secret (%d characters) reached %s" % (len(secret), where), pytrace=False)


def assert_has_secret(text, secret, where):
    """Fail, naming only ``where``, when ``secret`` is not verbatim in ``text`` (a file that must hold it)."""
    __tracebackhide__ = True  # pylint: disable=unused-variable
    if secret not in text:
        pytest.fail("the expected secret (%d characters) is not in %s" % (len(secret), where), pytrace=False)
