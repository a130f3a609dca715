"""Object storage (``s3://bucket/prefix``) beside local paths.

Every command and function that takes part files or an output directory also
takes an ``s3://`` URL. The requests are made in Rust (``hpd_encode._core``,
the ``object_store`` crate); this module holds the Python-side helpers:
telling URLs from paths, joining them, listing a prefix's part files,
reading a prefix's ``manifest.json``, and the client settings.

Credentials, region and endpoint come from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``) and, for what they leave unset, the
profile ``AWS_PROFILE`` names in ``~/.aws/credentials`` and ``~/.aws/config``.
Plain ``http://`` endpoints only with ``AWS_ALLOW_HTTP=true``.

Client settings (:func:`configure`, or ``HPD_S3_*`` variables read at first
use, which DataLoader workers inherit): ``max_concurrency`` (GETs in flight
per process, 32), ``max_retries`` (10; 5xx, 429, timeouts and dropped
connections are retried with exponential backoff), ``retry_timeout`` (120 s),
``timeout`` (300 s per request), ``connect_timeout`` (10 s) and ``part_size``
(64 MiB, for uploads).
"""

from __future__ import annotations

import fnmatch
import json
import os
from os import PathLike
from typing import Any

SCHEME = "s3://"

#: The settings :func:`configure` takes, and their environment variables.
SETTINGS_ENV = {
    "max_concurrency": "HPD_S3_MAX_CONCURRENCY",
    "max_retries": "HPD_S3_MAX_RETRIES",
    "retry_timeout": "HPD_S3_RETRY_TIMEOUT",
    "timeout": "HPD_S3_TIMEOUT",
    "connect_timeout": "HPD_S3_CONNECT_TIMEOUT",
    "part_size": "HPD_S3_PART_SIZE",
}


def is_remote(path: str | PathLike[str] | Any) -> bool:
    """True for an ``s3://`` URL (given as a string: a ``Path`` collapses the double slash)."""
    return isinstance(path, str) and path.startswith(SCHEME)


def join(prefix: str, name: str) -> str:
    """``s3://b/dir`` + ``name`` -> ``s3://b/dir/name``."""
    return prefix.rstrip("/") + "/" + name if not prefix.endswith(SCHEME) else prefix + name


def name_of(url: str) -> str:
    """The last component of a URL (``part_rank00.parquet``)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def parent_of(url: str) -> str:
    """The prefix holding ``url`` (``s3://b/dir/f`` -> ``s3://b/dir``)."""
    head = url.rstrip("/").rsplit("/", 1)[0]
    return head if len(head) > len(SCHEME) else url


def configure(**settings: Any) -> dict[str, Any]:
    """Change the object store client settings of this process (see the
    module doc) and export them as ``HPD_S3_*`` variables, so worker
    processes started afterwards use them too. Returns the settings in force."""
    from hpd_encode._core import configure_object_store
    from hpd_encode.errors import ObjectStoreConfigError

    unknown = sorted(set(settings) - set(SETTINGS_ENV))
    if unknown:
        raise ObjectStoreConfigError(
            f"unknown object store setting(s) {unknown}; known: {sorted(SETTINGS_ENV)}"
        )
    new = configure_object_store(**settings)
    for key, value in settings.items():
        if value is not None:
            os.environ[SETTINGS_ENV[key]] = str(value)
    return dict(new)


def settings() -> dict[str, Any]:
    """The object store client settings in force in this process."""
    from hpd_encode._core import object_store_settings

    return dict(object_store_settings())


def storage_options() -> dict[str, str]:
    """The resolved endpoint, region and credentials as ``object_store``
    keys (Polars' ``storage_options``), so Polars reaches the same server."""
    from hpd_encode._core import s3_storage_options

    return dict(s3_storage_options())


def list_files(prefix: str, pattern: str = "*") -> list[str]:
    """URLs of the objects directly under ``prefix`` whose name matches the
    glob ``pattern``, sorted. A ``prefix`` whose last component has glob
    characters (``s3://b/dir/part_*.parquet``) lists ``dir`` with that pattern."""
    from hpd_encode._core import list_objects

    last = name_of(prefix)
    if any(c in last for c in "*?["):
        prefix, pattern = parent_of(prefix), last
    return sorted(url for url, _ in list_objects(prefix) if fnmatch.fnmatchcase(name_of(url), pattern))


def sizes(prefix: str) -> dict[str, int]:
    """``{name: size}`` of the objects directly under ``prefix``."""
    from hpd_encode._core import list_objects

    return {name_of(url): size for url, size in list_objects(prefix)}


def read_json(url: str) -> Any | None:
    """The JSON object stored at ``url``, or None when there is no such object."""
    from hpd_encode._core import get_object
    from hpd_encode.errors import ObjectNotFoundError

    try:
        data = get_object(url)
    except ObjectNotFoundError as e:
        if "NoSuchBucket" in str(e):
            raise
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        from hpd_encode.errors import PartFileError

        raise PartFileError(f"'{url}' is not valid JSON ({e}); it is damaged") from e


def stats() -> dict[str, int]:
    """GET/PUT requests and bytes this process has made so far (``gets``,
    ``get_bytes``, ``puts``, ``put_bytes``)."""
    from hpd_encode._core import object_store_stats

    return dict(object_store_stats())


def reset_stats() -> None:
    from hpd_encode._core import reset_object_store_stats

    reset_object_store_stats()
