"""Credentials never leak: URLs with a password are masked in every log line the operator process
writes (its own and kopf's, messages and tracebacks), and the probe's credentials come from the
model's Secrets with errors naming Secrets and keys, never values."""

from __future__ import annotations

import base64
import copy
import logging
import subprocess
import sys

import pytest

from deeprec_api.redact import redact, url_has_credentials
from deeprec_operator.credentials import (
    CredentialError,
    SecretCache,
    decode_secret_data,
    first_token,
    probe_credentials,
)
from deeprec_operator.kube import ApiError
from deeprec_operator.spec import parse
from tests.support.operator.manifests import BASE_SPEC

PASSWORD = "pw-9f3a7c"


@pytest.mark.parametrize(("text", "masked"), [
    (f"redis://:{PASSWORD}@redis:6379/0", "redis://***@redis:6379/0"),
    (f"redis://default:{PASSWORD}@redis:6379", "redis://***@redis:6379"),
    (f"config {{'redis_url': 'default:{PASSWORD}@redis:6379'}}", "config {'redis_url': '***@redis:6379'}"),
    (f"rediss://redis:6380?db=0&password={PASSWORD}", "rediss://redis:6380?db=0&password=***"),
    ("redis://redis:6379/0 is fine", "redis://redis:6379/0 is fine"),
    ("mail ops@example.com", "mail ops@example.com"),
])
def test_redact(text, masked):
    assert redact(text) == masked


def test_url_has_credentials_matches_the_crd_rule():
    """Same answers as the CRD's CEL rule, which the e2e tests check on the API server."""
    assert url_has_credentials(f"redis://:{PASSWORD}@h:6379")
    assert url_has_credentials("u@h:6379")
    assert url_has_credentials(f"redis://h:6379/0?Password={PASSWORD}")
    assert not url_has_credentials("redis://h:6379/0")
    assert not url_has_credentials("h:6379")
    assert not url_has_credentials("unix:///run/redis@1.sock")


def test_every_log_record_of_the_process_is_masked():
    """In a fresh interpreter (the factory is process-wide): records from any logger, with %-args,
    through LoggerAdapters (kopf's object loggers are adapters), and exception tracebacks."""
    code = f"""
import logging, sys
from deeprec_api import redact
redact.install()
redact.install()  # idempotent
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s %(message)s")
url = "redis://:{PASSWORD}@redis:6379"
logging.getLogger("kopf.objects").info("diff: %s", {{"redisUrl": url}})
logging.LoggerAdapter(logging.getLogger("kopf.objects"), {{}}).warning("Handler failed: %s", url)
logging.getLogger("deeprec_operator.handlers").info(f"plain {{url}}")
try:
    raise ValueError("cannot connect to " + url)
except ValueError:
    logging.getLogger("x").exception("failed")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert PASSWORD not in out, out
    assert out.count("redis://***@redis:6379") == 4, out  # 3 messages and the traceback
    assert "ValueError" in out


def _security(**security):
    spec = copy.deepcopy(BASE_SPEC)
    spec["security"] = security
    return parse("wd", "ns", spec).security


def test_probe_credentials_read_the_models_secrets():
    secrets = {"wd-tls": {"tls.crt": b"CERT", "tls.key": b"KEY", "ca.crt": b"CA"},
               "wd-operator": {"tls.crt": b"OPCERT", "tls.key": b"OPKEY"},
               "clients-ca": {"ca.crt": b"CCA"},
               "wd-auth-token": {"token": b"# rotated in next\n  tok-1  \ntok-2\n"}}
    security = _security(tls={"secretName": "wd-tls", "clientAuth": {
        "caSecretName": "clients-ca", "operatorCertificateSecretName": "wd-operator"}},
        authentication={"bearerToken": {}})
    creds = probe_credentials(security, secrets.get)
    assert (creds.root_ca, creds.client_certificate, creds.client_key) == (b"CA", b"OPCERT", b"OPKEY")
    assert (creds.server_name, creds.token) == ("wd.ns.svc", "tok-1")
    assert "tok-1" not in repr(creds) and "OPKEY" not in repr(creds)


@pytest.mark.parametrize(("secrets", "message"), [
    ({}, "Secret 'wd-tls' not found"),
    ({"wd-tls": {"tls.crt": b"x"}}, "Secret 'wd-tls' has no key 'ca.crt'"),
    ({"wd-tls": {"ca.crt": b"CA"}, "callers": {"token": b"# none yet\n"}}, "holds no token"),
])
def test_probe_credentials_errors_name_what_is_missing(secrets, message):
    security = _security(tls={"secretName": "wd-tls"},
                         authentication={"bearerToken": {"secretName": "callers"}})
    with pytest.raises(CredentialError, match=message):
        probe_credentials(security, secrets.get)


def test_first_token_and_secret_data():
    assert first_token(b"\n# comment\n\n  a  \nb\n") == "a"
    assert first_token(b"# only comments\n") == ""
    data = {"data": {"token": base64.b64encode(b"t\n").decode(), "bad": "%%%"}}
    assert decode_secret_data(data) == {"token": b"t\n"}


class _Kube:
    def __init__(self, answers):
        self.answers, self.gets = answers, 0

    def get(self, path):
        self.gets += 1
        answer = self.answers[path.rsplit("/", 1)[1]]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_secret_cache_reuses_reads_for_a_while():
    now = [0.0]
    kube = _Kube({"s": {"data": {"k": base64.b64encode(b"v").decode()}}, "gone": None,
                  "locked": ApiError(403, "Forbidden", "no")})
    cache = SecretCache(kube, ttl=30, clock=lambda: now[0])
    assert cache.get("ns", "s") == {"k": b"v"} and cache.get("ns", "s") == {"k": b"v"}
    assert kube.gets == 1
    now[0] = 31.0
    cache.get("ns", "s")
    assert kube.gets == 2, "read again after the TTL: a rotated Secret reaches the probe"
    assert cache.get("ns", "gone") is None
    with pytest.raises(CredentialError, match="rbac.secretCheck"):
        cache.get("ns", "locked")


def test_operator_log_lines_of_a_failure_never_carry_the_token(caplog):
    """The ProbeError built from a credential failure, as status and log see it."""
    caplog.set_level(logging.INFO)
    security = _security(authentication={"bearerToken": {"secretName": "callers"}})
    try:
        probe_credentials(security, {"callers": {"other": b"tok-secret"}}.get)
    except CredentialError as e:
        logging.getLogger("test").warning("probe: %s", e)
    assert "tok-secret" not in caplog.text and "'callers' has no key 'token'" in caplog.text
