"""Writing what ``convert`` read: the one loop behind SFT and preference conversion.

Both kinds of data go through the same steps (records to the output, bad ones to the rejects file
or a ``FILE:LINE`` error, ``--dedup``, counts per file), so they share this loop and differ only in
how a file's records are read and what makes two records duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

from instructglm.convert.reading import Rejected
from instructglm.files import atomic_file, dumps

log = logging.getLogger(__name__)

MAX_LOGGED_REJECTS = 10

# (path, on_reject or None) -> (format name, the file's records as canonical JSON dicts)
RecordsOf = Callable[[Path, Callable[[Rejected], None] | None], tuple[str, Iterator[dict]]]


def record_key(record: dict, fields: tuple[str, ...]) -> bytes:
    """What ``--dedup`` compares: a short hash of ``fields`` of a canonical record."""
    parts = {k: record.get(k) for k in fields}
    return hashlib.blake2b(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode(), digest_size=16).digest()


def write_converted(output: str, paths: list[Path], rej_path: Path | None, records_of: RecordsOf,
                    dedup_fields: tuple[str, ...] | None) -> dict[str, Any]:
    """Every record of ``paths`` into ``output`` (atomically), rejects into ``rej_path`` (when given,
    else the first bad record raises), duplicates of ``dedup_fields`` dropped (when given).
    Returns the counts, ``files`` (records per file), ``formats``, ``output`` and ``rejects``."""
    counts = Counter(records=0, converted=0, rejected=0, duplicates=0)
    files: dict[str, int] = {}
    formats: dict[str, str] = {}
    seen: set[bytes] = set()
    with atomic_file(output) as out, (atomic_file(rej_path) if rej_path else nullcontext()) as rej:

        def on_reject(r: Rejected) -> None:
            counts["rejected"] += 1
            if counts["rejected"] <= MAX_LOGGED_REJECTS:
                log.warning("rejected %s", r.message())
            rej.write(r.to_json() + "\n")

        for path in paths:
            formats[str(path)], records = records_of(path, on_reject if rej else None)
            converted = 0
            for record in records:
                converted += 1
                if dedup_fields:
                    if (key := record_key(record, dedup_fields)) in seen:
                        counts["duplicates"] += 1
                        continue
                    seen.add(key)
                out.write(dumps(record) + "\n")
                counts["records"] += 1
            files[str(path)] = converted
            counts["converted"] += converted
    if counts["rejected"] > MAX_LOGGED_REJECTS:
        log.warning("%d more rejected records; all are in %s", counts["rejected"] - MAX_LOGGED_REJECTS, rej_path)
    return {**counts, "files": files, "formats": formats, "output": output,
            "rejects": str(rej_path) if rej_path else None}
