"""Credentials of an MLflow server: used, never shown, never written.

A URI may carry them (`http://user:password@host:5000`), as MLflow's own docs allow, or the
environment may (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD: what MLflow's client reads).
`take_credentials` moves them from the URI into that environment (this process and its children)
and returns the bare URI, which is all the project ever logs, prints or records: in tracking.json
(a DVC output, cached and pushed), MLflow params and tags, Prefect's flow parameters, messages.
`redact` is the second line of defence for any text that could still hold one.
"""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

ENV_USER, ENV_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/\s]*)?@", re.IGNORECASE)


def take_credentials(uri: str) -> str:
    """`uri` without its user:password@, which go to MLflow's environment variables instead."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    if parts.username:
        os.environ[ENV_USER] = unquote(parts.username)
    if parts.password is not None:
        os.environ[ENV_PASSWORD] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact(text: str) -> str:
    """`text` with the user:password@ of any URI in it shown as user:***@."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def auth_header() -> dict[str, str]:
    """The Basic authorization header MLflow's client sends, from the environment (none without a user)."""
    user = os.environ.get(ENV_USER)
    if not user:
        return {}
    token = base64.b64encode(f"{user}:{os.environ.get(ENV_PASSWORD, '')}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
