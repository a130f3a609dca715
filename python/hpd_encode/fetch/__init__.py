"""Getting the data: download a dataset, extract its split image archives.

- :mod:`.download` — :func:`download` fetches a dataset repository from the
  Hugging Face hub, or copies it from a local directory; both resume.
- :mod:`.archive` — :func:`find_archive_parts` and the streaming readers that
  present a split ``tar.gz`` as one byte stream (our own gzip layer, which
  checks the CRC and notices truncation).
- :mod:`.extract` — :func:`extract` writes an archive's regular files into a
  data root, refusing hostile members, never writing outside the root,
  resumable, one run per root at a time.

:func:`hpd_encode.check_dataset` (``hpd-encode check``) lives in :mod:`hpd_encode.check`.
"""

from __future__ import annotations

from hpd_encode.errors import ArchiveError, ExtractLimitError
from hpd_encode.fetch._common import parse_size
from hpd_encode.fetch.archive import find_archive_parts, natural_key
from hpd_encode.fetch.download import DownloadReport, download
from hpd_encode.fetch.extract import (
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    ExtractReport,
    RefusedMember,
    extract,
)

__all__ = [
    "DEFAULT_MAX_MEMBER_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "ArchiveError",
    "DownloadReport",
    "ExtractLimitError",
    "ExtractReport",
    "RefusedMember",
    "download",
    "extract",
    "find_archive_parts",
    "natural_key",
    "parse_size",
]
