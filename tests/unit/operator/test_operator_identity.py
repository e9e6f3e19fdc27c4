"""The operator starts under a uid that has no passwd entry, as its image runs (USER 10001)."""

from __future__ import annotations

import getpass
import os

from kopf._core.engines.peering import detect_own_id

from deeprec_operator.main import ensure_identity


def _no_login_name():
    raise KeyError("getpwuid(): uid not found: 10001")


def test_a_uid_without_passwd_entry_gets_an_identity_kopf_accepts(monkeypatch):
    for var in ("POD_ID", "LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(getpass, "getuser", _no_login_name)
    ensure_identity()
    # What kopf calls at start-up to name itself; without POD_ID it would raise the KeyError.
    assert detect_own_id(manual=False).startswith("deeprec-operator-uid")


def test_an_explicit_pod_id_and_a_known_user_are_left_alone(monkeypatch):
    monkeypatch.setenv("POD_ID", "operator-abc")
    ensure_identity()
    assert detect_own_id(manual=False) == "operator-abc"
    monkeypatch.delenv("POD_ID")
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    ensure_identity()
    assert "POD_ID" not in os.environ
