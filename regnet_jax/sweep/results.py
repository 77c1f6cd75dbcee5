"""Sweep results: one JSON object per line in DIR/results.jsonl, appended crash-safely.

A record is written with a single `write` on an O_APPEND descriptor followed by fsync, so concurrent shards can
share a file and a crash leaves at most one torn line. A torn line is never extended: if the file does not end in a
newline, the next record starts with one. Readers skip lines that are not complete JSON objects.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Sequence

RESULTS_FILE = "results.jsonl"


def results_path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS_FILE)


def append_record(path: str, record: Mapping[str, Any]) -> None:
  """Append one record as one complete line, flushed and fsynced before returning."""
  line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    if not _ends_with_newline(path):
      line = "\n" + line
    os.write(fd, line.encode())
    os.fsync(fd)
  finally:
    os.close(fd)


def read_records(path: str) -> list[dict[str, Any]]:
  """Every complete record of one results file (missing file: none). Torn or corrupt lines are skipped."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      text = raw.decode("utf-8", errors="replace").strip()
      if not text:
        continue
      try:
        record = json.loads(text)
      except json.JSONDecodeError:
        logging.warning("%s:%d: skipping a torn or corrupt line (%d bytes)", path, number, len(raw))
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def load_dirs(dirs: Iterable[str], labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Merge the results of several sweep (or shard) directories; a trial recorded twice counts once.

  labels (one per dir) replace the records' "sweep" name in memory: two runs of one sweep config (another
  training budget, say) then stay apart instead of being merged as shards of one sweep.
  """
  dirs = list(dirs)
  if labels is not None and len(labels) != len(dirs):
    raise ValueError(f"{len(labels)} labels for {len(dirs)} directories; give one label per directory")
  merged: dict[tuple, dict[str, Any]] = {}
  for i, d in enumerate(dirs):
    path = d if d.endswith(".jsonl") else results_path(d)
    if not os.path.exists(path):
      raise FileNotFoundError(f"no results file at {path}; pass a sweep workdir holding {RESULTS_FILE}")
    for record in read_records(path):
      if labels is not None:
        record = dict(record, sweep=labels[i])
      merged.setdefault((record.get("sweep"), record.get("trial")), record)
  return list(merged.values())


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    if f.tell() == 0:
      return True
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"
