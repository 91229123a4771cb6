"""What never reaches MLflow: passwords in URIs, values of keys that name a secret, and values
a config read from the environment without being allowed to.

A config may read environment variables with OmegaConf's ``${oc.env:NAME}``; a shared config
could then copy a cloud key or a database password into a shared tracking server, as a param
or in the logged ``config.yaml``. So reading the environment is refused unless the user
allows it (``--allow-env``, or ``load_config(..., allow_env=True)``), and whatever is logged
goes through :func:`redact` first: a ``user:password@`` in any URI keeps its user only, and
the value of any key whose last part names a secret (``password``, ``token``, ``secret``,
``key``, ``credentials``...) is masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "is_secret_key", "reads_environment", "redact", "redact_text"]

MASK = "***"

_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]*)@"
)
"""``scheme://user:password@``: the password part of any URI in a text."""

_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "token", "secret", "key", "apikey", "credential", "credentials"}
)

_ENV = re.compile(r"\$\{\s*oc\.env\s*:")


def is_secret_key(key: str) -> bool:
    """Whether a dotted key's last part names a secret (``db_password``, ``api.key``,
    ``aws_secret_access_key``); words are split at ``_``, ``-`` and case changes."""
    last = re.sub(r"([a-z])([A-Z])", r"\1_\2", key.rsplit(".", 1)[-1]).lower()
    return any(word in _SECRET_WORDS for word in re.split(r"[_\-\s]+", last))


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` masked."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a flat (dotted key -> value) mapping, or a nested one, fit to be logged."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = _redacted(str(key), value)
    return out


def _redacted(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _redacted(f"{key}.{k}", v) for k, v in value.items()}
    if value is not None and is_secret_key(key):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redacted(key, v) for v in value]
    return value


def reads_environment(raw: Any, key: str = "") -> str | None:
    """The first key (dotted) of raw config data whose value reads an environment variable
    (``${oc.env:...}``), or None."""
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            found = reads_environment(v, f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            found = reads_environment(v, f"{key}[{i}]")
            if found is not None:
                return found
    elif isinstance(raw, str) and _ENV.search(raw):
        return key or "<config>"
    return None
