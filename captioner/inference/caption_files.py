"""The captions file of `captioner caption --output`: JSON lines, CSV or TSV, chosen by suffix.

Columns: `image` (the photo's name: the path as given, or relative to the folder given),
`caption` (empty for a photo that could not be read) and `error` (why it could not be read;
empty in CSV/TSV and null in JSON lines for a captioned photo). Rows are appended a batch at a
time and flushed, so a killed run, or one stopped by a full disk (DiskFullError), keeps what it
wrote; the next run reads the names already there, cuts off a last row left half-written, and
appends the rest. A file that does not start as a captions file is refused, never cut.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from captioner.errors import ConfigError, DataError
from captioner.files import disk_full

COLUMNS = ("image", "caption", "error")
DELIMITERS = {".jsonl": None, ".csv": ",", ".tsv": "\t"}  # None: one JSON object a line
# File names are bytes on Linux: undecodable ones round-trip as the bytes they were.
ENCODING, ERRORS = "utf-8", "surrogateescape"


def output_format(path: str | Path) -> str:
    """The suffix that says the format (.jsonl, .csv or .tsv); anything else is a ConfigError."""
    suffix = Path(path).suffix.lower()
    if suffix not in DELIMITERS:
        raise ConfigError(
            f"{path}: unknown output format {suffix or '(no suffix)'!r}: "
            f"use {', '.join(DELIMITERS)}"
        )
    return suffix


def read_names(path: str | Path) -> set[str]:
    """The photos already in the captions file at `path` (none if there is no file).

    A last row without its line end was cut short by a killed run: it is cut off the file, so
    that its photo is captioned again and appended whole. Anything else that is not a row of a
    captions file is a DataError.
    """
    path = Path(path)
    if not path.exists():
        return set()
    try:
        return _read_and_repair(path, DELIMITERS[output_format(path)])
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None


def _read_and_repair(path: Path, delimiter: str | None) -> set[str]:
    names: set[str] = set()
    end = 0  # where the last complete row ends
    with open(path, "rb") as file:
        rows = _json_rows(file, path) if delimiter is None else _csv_rows(file, path, delimiter)
        for name, offset in rows:
            names.add(name)
            end = offset
        names.discard(None)  # the header's
        size = file.seek(0, io.SEEK_END)
        file.seek(end)
        tail = file.read(size - end)
    if end < size:
        if end == 0 and not _starts_a_captions_file(tail, delimiter):
            raise DataError(f"{path}: not a captions file (no complete line, and it does not "
                            "start as one): give another --output")  # fmt: skip
        with open(path, "r+b") as file:
            file.truncate(end)
    return names


def _starts_a_captions_file(data: bytes, delimiter: str | None) -> bool:
    """Whether `data`, a file's only line, cut short, can be the start of a captions file: the
    beginning of a JSON line's row, or of the CSV/TSV header. Anything else is not cut."""
    if delimiter is None:
        start = b'{"image": '
        return data[: len(start)] == start[: len(data)]
    header = (delimiter.join(COLUMNS) + "\n").encode(ENCODING)
    return header.startswith(data)


def _complete_lines(file) -> Iterator[tuple[int, str]]:
    """(offset after the line, line) for each line that has its line end."""
    offset = 0
    for raw in file:
        if not raw.endswith(b"\n"):
            return
        offset += len(raw)
        yield offset, raw.decode(ENCODING, ERRORS)


def _json_rows(file, path: Path) -> Iterator[tuple[str, int]]:
    """(image, offset after its line) per complete line."""
    for number, (offset, line) in enumerate(_complete_lines(file), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("image"), str)):
            raise DataError(f"{path}:{number}: not a JSON object with an image: give another "
                            "--output, or delete that line")  # fmt: skip
        yield row["image"], offset


def _csv_rows(file, path: Path, delimiter: str) -> Iterator[tuple[str | None, int]]:
    """(image, offset after its row) per complete row; (None, offset) for the header."""
    end, at_end = 0, False

    def lines():  # the csv reader takes a line at a time, so `end` follows the rows it returns
        nonlocal end, at_end
        for offset, line in _complete_lines(file):
            end = offset
            yield line
        at_end = True

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    try:
        for number, row in enumerate(reader):
            if number == 0 and tuple(row) != COLUMNS:
                raise DataError(f"{path}:1: not a captions file (its header is not "
                                f"{delimiter.join(COLUMNS)}): give another --output")  # fmt: skip
            if len(row) != len(COLUMNS):
                raise DataError(f"{path}:{reader.line_num}: expected {len(COLUMNS)} columns, "
                                f"found {len(row)}: give another --output")  # fmt: skip
            yield (row[0] if number else None), end
    except csv.Error as error:
        if not at_end:  # a row cut short can only be the last one: a quoted field left open
            raise DataError(f"{path}:{reader.line_num}: {error}: give another --output") from None


class CaptionWriter:
    """Appends rows to a captions file, writing the header first if the file is empty.

    Call `read_names` first: it cuts off a half-written last row.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.delimiter = DELIMITERS[output_format(self.path)]
        try:
            with self._room():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                empty = not self.path.exists() or self.path.stat().st_size == 0
                self.file = open(self.path, "a", encoding=ENCODING, errors=ERRORS, newline="")
        except OSError as error:
            raise DataError(f"{path}: cannot write it ({error.strerror or error})") from None
        self.csv = None
        if self.delimiter is not None:
            self.csv = csv.writer(self.file, delimiter=self.delimiter, lineterminator="\n")
            if empty:
                with self._room():
                    self.csv.writerow(COLUMNS)
                    self.file.flush()

    def write(self, rows: Iterable[tuple[str, str, str | None]]) -> None:
        """Appends (image, caption, error or None) rows and flushes them to the file."""
        with self._room():
            for image, caption, error in rows:
                if self.csv is not None:
                    self.csv.writerow((image, caption, error or ""))
                else:
                    row = dict(zip(COLUMNS, (image, caption, error)))
                    self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())  # on disk, not in a cache: a full disk shows now

    def close(self) -> None:
        with self._room():  # what a failed write left in the buffer is tried once more here
            self.file.close()

    @contextmanager
    def _room(self):
        """A full disk is a DiskFullError: the rows on disk are whole but for the last one,
        which the next run cuts off before it appends the photos the file lacks."""
        try:
            yield
        except OSError as error:
            full = disk_full(error, self.path)
            if full is None:
                raise
            raise full.then("run the same command again: it captions only the photos the "
                            "file lacks") from error  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
