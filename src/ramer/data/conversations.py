"""Bring your own conversations: a CSV / JSONL of utterances in, the native format out.

The schema (docs/DATA.md, "Your own conversations"): one row per utterance with ``conversation``,
``index`` (order), ``speaker``, ``text`` and optional ``start``, ``end`` (seconds), ``media`` (the
conversation's audio or video file, relative to the table), ``present`` (other persons visible or
taking part, ``;``-separated), ``labels`` (``;``-separated emotion names), ``target`` (1 where the
row's speaker is to be predicted; default every row) and ``split`` (train / valid / test, constant
within a conversation).

What is built, per conversation:
- persons = its speakers and everyone named in ``present``, in order of first appearance;
  segments = its utterances, ordered by ``index``;
- the speaker of a row has text (empty text: absent) and audio (when the conversation has media);
  everyone else in that segment has no text and no audio; visual only where a face is reliably
  given to a person (``features.assign_faces``);
- one sample per target row: the scene is every person of the conversation over the utterances
  within ``context`` of the target (``2 * context + 1`` at most), the target is (speaker, that
  utterance), role speaker, labels the row's labels. Sample ids are ``"{conversation}/{index}"``.

The task is recorded in ``meta.json`` (``import_task``): ``single_label`` when the file is
labelled and every sample has exactly one label, else ``multi_label``; ``--task`` overrides it.

Row numbers in errors are line numbers of the file (the CSV header is row 1, as in a spreadsheet).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.config import MAX_GRID
from ramer.console import LOG_EVERY, labels_phrase, live, plain_console, plural
from ramer.data import features as F
from ramer.data.store import DataBundle, SceneStore, check_dataset_folder, label_count_problem, row_map
from ramer.errors import RamerError, control_character, first_of
from ramer.metrics import ARGMAX, decide
from ramer.paths import not_a_regular_file

FORMAT = "conversations"
# a conversation's persons at most (a scene is persons x utterances: 30,000 names in one
# 'present' cell asked for 8.7 GiB); the embedded benchmark's bound too (config.MAX_GRID)
MAX_PERSONS = MAX_GRID
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
REQUIRED = ("conversation", "index", "speaker", "text")
OPTIONAL = ("start", "end", "media", "present", "labels", "target", "split")
COLUMNS = REQUIRED + OPTIONAL
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_CONTEXT = 8
MEDIA_SLACK = 0.5  # seconds an utterance may end after the media's end (rounding of times)
# characters a CSV cell may hold: Python's csv stops at 131,072, JSONL has no limit; the largest
# value every platform's C long holds (sys.maxsize overflows it on Windows)
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
# a text of at most this many characters is never cut by the text model: a character gives at most
# 3 word pieces (the tokenizer's NFD splits a Hangul syllable into 3 jamo), so 3 * 80 + 2 ([CLS],
# [SEP]) = 242 pieces, under all-MiniLM-L6-v2's 256; only longer texts are tokenized to count cuts
WHOLE_TEXT_CHARS = 80
_TRUE, _FALSE = ("1", "true", "yes", "y"), ("0", "false", "no", "n")
SHOWN_CHARS = 80  # a value quoted in an error is cut to about this many characters
SHOWN_NAMES = 5  # the names a note lists before 'and N more'
# a run of these characters between two label names joins them (``joy|anger``, ``joy anger``);
# '-', '_' and '.' are part of a name (``bitter-sweet``)
_SEPARATORS = re.compile(r"[\s,;|/+&]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # where a file opened with newline="" ends a line
_EXCEL_HINT = "save as CSV UTF-8 (Excel) or re-encode (iconv -f cp1252 -t utf-8)"


# ============================================================================================ rows
@dataclass
class Utterance:
    row: int
    conversation: str
    index: int
    speaker: str
    text: str
    start: float | None = None
    end: float | None = None
    media: str = ""
    present: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    target: bool = True
    split: str = ""


@dataclass
class Conversation:
    name: str
    utterances: list[Utterance]  # sorted by index: one segment each
    persons: list[str]
    media: Path | None = None
    media_row: int = 0  # the row that names the media (for errors)
    media_name: str = ""  # ... and the name it gives
    has_video: bool = False
    has_audio: bool = False
    split: str = ""

    @property
    def speakers(self) -> list[int]:
        return [self.persons.index(u.speaker) for u in self.utterances]

    @property
    def others(self) -> list[list[int]]:
        """Per segment, the persons the row lists in ``present`` (the speaker excluded)."""
        return [[self.persons.index(q) for q in u.present] for u in self.utterances]

    @property
    def windows(self) -> list[tuple[float, float]]:
        return [(float(u.start), float(u.end)) for u in self.utterances]  # type: ignore[arg-type]


def _where(path: Path, row: int) -> str:
    return f"{path}: row {row}"


def _short(value: Any) -> str:
    """``repr(value)``, cut to about ``SHOWN_CHARS`` characters (a whole column can land in a cell)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _text(value: Any, path: Path, row: int, column: str, expected: str = "text") -> str:
    """A cell as stripped text. JSON ``null`` and ``NaN`` (what pandas writes for a missing value,
    and Python's json reads) are empty; ``Infinity`` is an error."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if (
        isinstance(value, bool)
        or not isinstance(value, (str, int, float))
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise RamerError(f"{_where(path, row)}: column '{column}' holds {_short(value)}, expected {expected}")
    return str(value).strip()


def _name(value: Any, path: Path, row: int, column: str) -> str:
    """An id (conversation, person): text or a JSON integer; a JSON number with a fraction part is
    refused, as ``1.0`` and ``1`` would be two names. A name is read in Unicode's composed form
    (NFC): ``José`` typed with a combining accent in one row and without in another is one person,
    and ``Café`` one conversation (two, its halves went to splits of their own)."""
    if isinstance(value, float) and math.isfinite(value):
        raise RamerError(
            f"{_where(path, row)}: column '{column}' holds the number {value!r}; give a name as text or an integer "
            "(1.0 and 1 would be two names)"
        )
    text = _text(value, path, row, column)
    _printable(text, path, row, column)
    return unicodedata.normalize("NFC", text) if column in ("speaker", "present", "conversation") else text


def _printable(name: str, path: Path, row: int, column: str) -> None:
    """A RamerError naming the row when ``name`` (a conversation, person, label or media file) holds
    a control character (``errors.control_character``): names are printed, and text need not be."""
    if (c := control_character(name)) is not None:
        raise RamerError(
            f"{_where(path, row)}: column '{column}' holds {_short(name)}, a name with the control character "
            f"{c} (names are printed to the terminal); write it without"
        )


def _int(value: Any, path: Path, row: int, column: str) -> int:
    text = _text(value, path, row, column, "an integer")
    try:
        return int(text)  # exact, however large
    except ValueError:
        pass
    try:  # "3.0", "1e3"
        number = float(text)
        if not text or not math.isfinite(number) or number != int(number):
            raise ValueError
        return int(number)
    except ValueError:
        raise RamerError(f"{_where(path, row)}: column '{column}' is {_short(text)}, expected an integer") from None


def _seconds(value: Any, path: Path, row: int, column: str) -> float | None:
    text = _text(value, path, row, column, "seconds (a number >= 0)")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise RamerError(f"{_where(path, row)}: column '{column}' is {_short(text)}, expected seconds (a number >= 0)")
    return number


def _names(value: Any, path: Path, row: int, column: str) -> tuple[str, ...]:
    """The names of a ``labels`` / ``present`` cell: ``;``-separated text or a JSON list of names.
    A list of labels that holds numbers (a multi-hot vector), true/false in either list, and a cell
    written like a Python list are refused; a person id in ``present`` may be an integer, as in
    ``speaker``."""
    if isinstance(value, list):
        numbers = (bool,) if column == "present" else (bool, int, float)
        if any(isinstance(v, numbers) for v in value):
            raise RamerError(
                f"{_where(path, row)}: column '{column}' holds {_short(value)}: give names, not a 0/1 vector "
                '(e.g. ["joy", "anger"]; a name that is a number as text: ["7"])'
            )
        items = [_name(v, path, row, column) for v in value]
    elif column == "labels" and isinstance(value, (bool, int, float)) and value == value:  # a number, a 0/1 (NaN: null)
        raise RamerError(
            f"{_where(path, row)}: column 'labels' holds the number {_short(value)}: give names "
            '(e.g. ["joy"]; a name that is a number as text: ["7"])'
        )
    else:
        cell = _text(value, path, row, column)
        _python_list(cell, path, row, column)
        items = cell.split(";")
        if column == "labels" and len(items) > 2 and all(i.strip() in ("0", "1") for i in items):
            raise RamerError(
                f"{_where(path, row)}: column 'labels' holds {_short(cell)}: give names, not a 0/1 vector "
                "(e.g. 'joy;anger'; they would be two labels, '0' and '1')"
            )
    out: list[str] = []
    for item in items:
        item = item.strip()
        _python_list(item, path, row, column)
        _printable(item, path, row, column)
        if column == "present":  # as ``_name`` reads a person's name
            item = unicodedata.normalize("NFC", item)
        if item and item not in out:
            out.append(item)
    return tuple(out)


def _python_list(cell: str, path: Path, row: int, column: str) -> None:
    """A RamerError when a ``labels`` cell is written as a list (``['joy', 'anger']``: what pandas
    writes for a column of lists), or a ``present`` cell as a list of quoted names."""
    cell = cell.strip()
    quoted = re.fullmatch(r"\[\s*(['\"].*['\"])?\s*\]", cell, re.S)
    if not (quoted or (column == "labels" and cell.startswith("[") and cell.endswith("]"))):
        return
    names = re.findall(r"['\"]([^'\"]*)['\"]", cell) or [n for n in [cell[1:-1].strip()] if n]
    if path.suffix.lower() in _JSONL_SUFFIXES:
        how = f"give the names as a JSON list, one name per item ({json.dumps(names)})"
    else:
        how = f"give the names separated by ';' ('{';'.join(names)}')" if names else "leave the cell empty"
    raise RamerError(
        f"{_where(path, row)}: column '{column}' is {_short(cell)}, which looks like a Python list (pandas writes "
        f"a column of lists so); {how}"
    )


def _target(value: Any, path: Path, row: int) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value, path, row, "target").lower()
    if text == "" or text in _TRUE:
        return True
    if text in _FALSE:
        return False
    try:  # "1.0", as `index` takes "3.0" (pandas writes a column with a missing value as floats)
        number = float(text)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0):
        return number == 1.0
    raise RamerError(f"{_where(path, row)}: column 'target' is {_short(text)}, expected 1 or 0 (empty: 1)")


def _utterance(raw: dict, path: Path, row: int) -> Utterance:
    for col in REQUIRED:
        if col not in raw:
            raise RamerError(f"{_where(path, row)}: missing column '{col}' (required: {', '.join(REQUIRED)})")
    u = Utterance(
        row=row,
        conversation=_name(raw["conversation"], path, row, "conversation"),
        index=_int(raw["index"], path, row, "index"),
        speaker=_name(raw["speaker"], path, row, "speaker"),
        text=_text(raw["text"], path, row, "text"),
        start=_seconds(raw.get("start"), path, row, "start"),
        end=_seconds(raw.get("end"), path, row, "end"),
        media=_text(raw.get("media"), path, row, "media"),
        labels=_names(raw.get("labels"), path, row, "labels"),
        target=_target(raw.get("target"), path, row),
        split=_text(raw.get("split"), path, row, "split"),
    )
    _printable(u.media, path, row, "media")  # errors about the file print it
    if not u.conversation:
        raise RamerError(f"{_where(path, row)}: empty 'conversation'")
    if not u.speaker:
        raise RamerError(f"{_where(path, row)}: empty 'speaker'")
    u.present = tuple(q for q in _names(raw.get("present"), path, row, "present") if q != u.speaker)
    if u.split and u.split not in SPLITS:
        raise RamerError(f"{_where(path, row)}: split {_short(u.split)}, expected one of {', '.join(SPLITS)}")
    if u.start is not None and u.end is not None and u.end <= u.start:
        raise RamerError(f"{_where(path, row)}: end {u.end} is not after start {u.start}")
    return u


def table_digest(path: str | Path) -> str:
    """sha256 of a table file's bytes: recorded at import, so ``ramer view`` shows its texts only
    while the file is the one the import read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _need_file(path: Path, give: str) -> None:
    """A RamerError naming ``path`` unless a regular file is there: a folder (the error says to
    give ``give``), a pipe, a device, a link to nothing (``paths.not_a_regular_file``), or nothing."""
    if not path.is_file():
        what = f"a folder; give {give}" if path.is_dir() else not_a_regular_file(path) or "file not found"
        raise RamerError(f"{path}: {what}")


def read_table(path: str | Path) -> tuple[list[Utterance], set[str]]:
    """The utterances of a CSV (``.csv``, ``.tsv``) or JSONL (``.jsonl``, ``.json``) file, each
    checked, and the set of columns the file has."""
    path = Path(path)
    _need_file(path, "the table file (.csv, .tsv, .jsonl)")
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _read_jsonl(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    raise RamerError(f"{path}: unknown table type '{suffix}': expected .csv, .tsv, .txt, .jsonl, .json or .ndjson")


def _check_columns(columns, path: Path, row: int) -> None:
    """A RamerError naming every unknown column at once (a table made for another tool, MELD's
    ``Utterance,Speaker,Emotion,...``, took a run per column), with the known column a name differs
    from only in case (``Speaker``) and the required columns the header lacks (a renamed
    ``text``)."""
    unknown = [c for c in columns if c not in COLUMNS]
    if not unknown:
        return
    hint = " (a trailing separator in the header?)" if unknown == [""] else ""
    shown = first_of([_short(c) for c in unknown], 6)
    said = f"{_where(path, row)}: unknown column{'s' * (len(unknown) > 1)} {shown}{hint} (known: {', '.join(COLUMNS)})"
    by_key = {c.casefold(): c for c in COLUMNS}
    like = [(c, by_key[c.casefold()]) for c in unknown if c.casefold() in by_key]
    if like:
        said += "; column names are lower case: " + ", ".join(f"{k!r} for {_short(c)}" for c, k in like[:3])
    missing = [c for c in REQUIRED if c not in columns and c not in {k for _, k in like}]
    if missing:
        said += f"; the required {', '.join(repr(c) for c in missing)} {'is' if len(missing) == 1 else 'are'} missing"
    raise RamerError(said)


def _utf16_without_mark(path: Path) -> RamerError:
    """The error for a table in UTF-16 without a byte-order mark (every other byte 0 in Latin text)."""
    return RamerError(
        f"{path}: UTF-16 text without a byte-order mark (every other byte is 0), expected UTF-8; save as CSV "
        "UTF-8, or re-encode (iconv -f utf-16le -t utf-8)"
    )


def _not_utf8(path: Path, csv_file: bool) -> RamerError:
    """The error for a table that is not UTF-8: the row (line) and file offset of the first bad byte,
    and how to save or convert the file. The decoder's own position counts within its chunk."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return RamerError(f"{path}: UTF-16 text, expected UTF-8; {_EXCEL_HINT.replace('cp1252', 'utf-16')}")
    if data[:4096].count(0) * 4 > len(data[:4096]):  # every other byte 0: UTF-16 of Latin text, no mark
        return _utf16_without_mark(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start
        breaks = len(re.findall(rb"\r\n|\r|\n", data[:at]))  # as a CSV reader and read_text count lines
        how = _EXCEL_HINT if csv_file else "re-encode it (iconv -f cp1252 -t utf-8)"
        return RamerError(
            f"{_where(path, breaks + 1)}: not UTF-8 text (byte 0x{data[at]:02x} at file offset {at}); {how}"
        )
    return RamerError(f"{path}: not UTF-8 text")  # pragma: no cover (the file changed while read)


class _RawLines:
    """The lines of a file as the csv reader takes them; ``record`` keeps those of the record being
    read, so that a quoted cell spanning lines can be checked against the text it came from."""

    def __init__(self, fh):
        self.fh, self.record = fh, []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.fh)
        self.record.append(line)
        return line


def _csv_reader(fh, delimiter: str):
    lines = _RawLines(fh)
    return csv.reader(lines, delimiter=delimiter), lines


def _cell_name(header: list[str], j: int) -> str:
    return f"'{header[j]}'" if j < len(header) else f"{j + 1}"


def _check_quotes(
    cells: list[str], lines: list[str], header: list[str], row: int, path: Path, delimiter: str, suspects=None
) -> None:
    """A quote that is never closed makes the csv reader take every line after it into one cell,
    without an error: a RamerError when that cell runs to the end of the file, or when a line it
    holds reads on its own as a whole row (``_reads_as_row``: the header's width, a conversation and
    a whole-number index) and the cell's quoting is not well formed (text after its closing quote:
    it closed on a quote of a later row). Where it is well formed (the unclosed quote closed on a
    quote that ends a later cell, ``6'2"``; or a real text of several lines), the error is kept in
    ``suspects`` (where given) with the conversation that line names: the caller raises it where the
    file has that conversation (a table of scores in a text names none: it was refused as an unclosed
    quote)."""
    if not any('"' in line for line in lines):
        return
    well_formed = True
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            j = len(cells) - 1
            opened = row + sum(len(_LINE_BREAK.findall(c)) for c in cells[:j])
            raise RamerError(
                f"{_where(path, opened)}: a quote opens in cell {_cell_name(header, j)} and is never closed: the cell "
                f"runs to the end of the file (row {row + len(lines) - 1}); an unclosed quote? (a quote inside a "
                'quoted cell is written twice: "")'
            ) from None
        well_formed = False
    opened = row
    for j, cell in enumerate(cells):
        breaks = len(_LINE_BREAK.findall(cell))
        closed = opened + breaks
        # the lines after the one the quote opens on; the closing one only when the cell is not the
        # first of its row (then that line holds the cells of the row before it too)
        inner = range(opened + 1, closed + (j > 0))
        for k in inner:
            if k - row < len(lines) and _reads_as_row(lines[k - row], header, delimiter):
                error = RamerError(
                    f"{_where(path, opened)}: the quoted cell {_cell_name(header, j)} opened on row {opened} and "
                    f"closed on row {closed} holds whole rows (row {k} reads as one); an unclosed quote? (a quote "
                    'inside a quoted cell is written twice: "")'
                )
                if not well_formed or "conversation" not in header or suspects is None:
                    raise error
                line = next(csv.reader([lines[k - row]], delimiter=delimiter))
                suspects.append((error, unicodedata.normalize("NFC", line[header.index("conversation")].strip())))
        opened = closed
    if not well_formed:
        _quote_closed_early(lines, header, row, path, delimiter)


def _quote_closed_early(lines: list[str], header: list[str], row: int, path: Path, delimiter: str) -> None:
    """A RamerError for a cell that begins with a quote closed before the cell ends (``"Hi," she
    said``, as a table written without quoting holds it): the csv reader takes that quote as the
    cell's quoting and drops it with its closing one, without an error. The record is read cell by
    cell, as the reader does (``""`` inside a quoted cell is a quote), so the message names the cell
    that breaks the quoting, its row and how to write it."""
    raw, ends = "".join(lines), (delimiter, "\r", "\n")
    i = j = 0  # the position in the record; the cell's number
    while i < len(raw):
        start = i
        if raw[i] == '"':
            i += 1
            while i < len(raw) and not (raw[i] == '"' and raw[i + 1 : i + 2] != '"'):
                i += 2 if raw[i] == '"' else 1  # a doubled quote is one quote of the text
            i += 1  # past the closing quote
            if i < len(raw) and raw[i] not in ends:
                while i < len(raw) and raw[i] not in ends:
                    i += 1
                cell = raw[start:i]
                raise RamerError(
                    f"{_where(path, row + len(_LINE_BREAK.findall(raw[:start])))}: cell {_cell_name(header, j)} begins "
                    f"with a quote that closes before the cell ends ({_short(cell)}): a quote at the start of a cell "
                    "opens a quoted cell, so a reader drops both quotes; quote the whole cell and write each quote in "
                    f"it twice ({_short(_requoted(cell))}), as spreadsheet programs and csv writers do"
                )
        else:
            while i < len(raw) and raw[i] not in ends:
                i += 1
        if i >= len(raw) or raw[i] != delimiter:
            break
        i, j = i + 1, j + 1
    # no such cell: the strict reader failed on something else
    raise RamerError(  # pragma: no cover
        f"{_where(path, row)}: not a readable CSV row (a quote where a cell cannot hold one)"
    )


def _requoted(cell: str) -> str:
    """``cell`` (its raw text) as a csv writer quotes it: in quotes, each quote written twice."""
    return '"' + cell.replace('"', '""') + '"'


def _reads_as_row(line: str, header: list[str], delimiter: str) -> bool:
    """Whether one line of a quoted cell reads on its own as a row of the table: the header's number
    of cells, a conversation and a whole-number index (a line of text with commas has the first, not
    the others)."""
    cells = next(csv.reader([line], delimiter=delimiter), [])
    if len(cells) != len(header):
        return False
    if "conversation" in header and not cells[header.index("conversation")].strip():
        return False
    if "index" in header:
        try:
            return float(cells[header.index("index")].strip()).is_integer()
        except ValueError:
            return False
    return True


def _csv_rows(reader, lines: _RawLines, header: list[str], path: Path, delimiter: str = ",", suspects=None):
    """(line number, cells) of each non-blank row after the header; a row of another width is an error.
    The line number is the one the record starts on (a quoted cell may span lines). ``suspects``:
    ``_check_quotes``'s, for the caller to raise (without it, raised at once)."""
    while True:
        row = reader.line_num + 1
        lines.record = []
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise RamerError(f"{_where(path, row)}: not a readable CSV row ({e})") from None
        _check_quotes(cells, lines.record, header, row, path, delimiter, suspects)
        if not any(c.strip() for c in cells):
            continue
        # `cat a.csv b.csv` (b's byte-order mark too): it read as "'index' is 'index'"
        if all(c.strip().lstrip("\ufeff") in COLUMNS for c in cells):
            again = [c.strip().lstrip("\ufeff") for c in cells]
            if again == header:
                fix = ""
            elif sorted(again) == sorted(header):
                fix = ", and put the rows below it in row 1's column order"
            else:
                fix = ", and give the rows below it row 1's columns, in its order"
            raise RamerError(
                f"{_where(path, row)}: a header row again (row 1 is the header): tables joined with their headers? "
                f"keep only the first header row{fix}"
            )
        if len(cells) != len(header):
            raise RamerError(f"{_where(path, row)}: {len(cells)} cells, the header has {len(header)}")
        yield row, cells


def _other_separator(header: list[str], delimiter: str, path: Path) -> None:
    """A RamerError when the header is one cell holding the known column names joined by another
    separator (a ';'-separated CSV from a European Excel, a tab-separated .txt)."""
    if len(header) != 1:
        return
    for sep in (";", "\t", ",", "|"):
        parts = [h.strip() for h in header[0].split(sep)]
        if sep == delimiter or len(parts) < 2 or not all(q in COLUMNS for q in parts):
            continue
        what = "tabs" if sep == "\t" else f"'{sep}'"
        reads = "tabs" if delimiter == "\t" else "','"
        if sep == "\t":
            use = "name the file .tsv"
        elif sep == ",":
            use = "name the file .csv"
        else:
            use = "save it with ',' as .csv (Excel: CSV UTF-8, comma delimited) or with tabs as .tsv"
        raise RamerError(
            f"{_where(path, 1)} (header): the columns are separated by {what}, and a {path.suffix.lower()} file is "
            f"read with {reads}: {use}"
        )


def _read_csv(path: Path, delimiter: str) -> tuple[list[Utterance], set[str]]:
    before = csv.field_size_limit(CSV_FIELD_LIMIT)  # a long text reads as it does from JSONL
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
        with fh:
            reader, lines = _csv_reader(fh, delimiter)
            header = next(reader, None)
            if header is None:
                raise RamerError(f"{path}: empty file (expected a header row: {', '.join(REQUIRED)}, ...)")
            header = [h.strip() for h in header]
            if any("\x00" in h for h in header):  # ASCII in UTF-16: it decodes as UTF-8, a 0 after each letter
                raise _utf16_without_mark(path)
            if 1 <= len(header) <= 2 and header[0].lower().startswith("sep="):
                raise RamerError(
                    f"{_where(path, 1)}: {lines.record[0].strip()!r} is Excel's line naming the separator, not the "
                    "header; delete that line (the header comes first)"
                )
            if not any(header):
                raise RamerError(
                    f"{_where(path, 1)}: empty; the header is expected on row 1 ({', '.join(REQUIRED)}, ...)"
                )
            _other_separator(header, delimiter, path)
            _check_columns(header, path, 1)
            for col in REQUIRED:
                if col not in header:
                    raise RamerError(
                        f"{_where(path, 1)} (header): missing column '{col}' (the header has: {', '.join(header)})"
                    )
            if len(set(header)) != len(header):
                raise RamerError(f"{_where(path, 1)} (header): a column appears twice ({', '.join(header)})")
            suspects: list[tuple[RamerError, str]] = []  # rows a well-quoted cell holds, and their conversation
            rows = _csv_rows(reader, lines, header, path, delimiter, suspects)
            out = [_utterance(dict(zip(header, cells)), path, row) for row, cells in rows]
            names = {u.conversation for u in out}
            for error, conversation in suspects:  # a conversation of the file: rows an unclosed quote swallowed
                if conversation in names:
                    raise error
            if not out:
                raise RamerError(
                    f"{path}: no rows below the header (row 1)"
                    if reader.line_num <= 1
                    else f"{path}: no utterances: every row below the header (row 1) is empty"
                )
    except UnicodeDecodeError:
        raise _not_utf8(path, csv_file=True) from None
    except csv.Error as e:
        raise RamerError(f"{path}: not a readable CSV file ({e})") from None
    finally:
        csv.field_size_limit(before)
    return out, set(header)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: a key given twice is an error (json keeps the last one silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_jsonl(path: Path) -> tuple[list[Utterance], set[str]]:
    out, columns = [], set()
    try:
        # split at line feeds only: str.splitlines also splits at U+2028 and others, legal inside a JSON string
        lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError:
        raise _not_utf8(path, csv_file=False) from None
    one_per_line = "; a JSONL file holds one object per line"
    records = " (pandas: to_json(path, orient='records', lines=True))"
    for row, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise RamerError(f"{_where(path, row)}: column {_short(e.args[0])} appears twice") from None
        except RecursionError:
            raise RamerError(f"{_where(path, row)}: not valid JSON (nested too deeply)") from None
        except json.JSONDecodeError as e:
            whole = line.strip() == "{" or line.lstrip().startswith("[")  # a pretty-printed document
            hint = f"{one_per_line}, not one JSON document" if whole else ""
            raise RamerError(f"{_where(path, row)}: not valid JSON ({e.msg}){hint}") from None
        except ValueError as e:  # an integer of more digits than Python converts (4300)
            raise RamerError(f"{_where(path, row)}: not readable JSON ({str(e).split(';')[0]})") from None
        if not isinstance(raw, dict):
            hint = f"{one_per_line}, not one JSON array of rows{records}" if isinstance(raw, list) else ""
            raise RamerError(
                f"{_where(path, row)}: holds a {type(raw).__name__}, expected an object (one utterance){hint}"
            )
        _lone_surrogate(raw, path, row)
        _check_columns(raw, path, row)
        if all(isinstance(raw.get(c), (dict, list)) for c in REQUIRED):
            raise RamerError(
                f"{_where(path, row)}: every column holds many values (a table written column by column, as pandas' "
                f"to_json does by default){one_per_line}, one utterance each{records}"
            )
        columns |= set(raw)
        out.append(_utterance(raw, path, row))
    return out, columns


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(raw: dict, path: Path, row: int) -> None:
    """A RamerError when a text of a JSONL row (or an item of a list in it) holds a lone surrogate:
    ``"\\ud800"`` is valid JSON but no character, which no file or terminal can take (it failed
    deep in the text model, or when a name was printed). A column name holding one is unknown."""
    for key, value in raw.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and (m := _SURROGATE.search(v)):
                raise RamerError(
                    f"{_where(path, row)}: column {_short(key)} holds \\u{ord(m.group()):04x}, half of a character "
                    "written as a JSON escape (a lone surrogate), which is no text; write the whole character"
                )


# =================================================================================== conversations
def group_conversations(utterances: list[Utterance], path: Path, columns: set[str]) -> list[Conversation]:
    """Conversations in order of first appearance, utterances sorted by ``index``; checks that
    indices are unique, ``split`` and ``media`` constant, and that no conversation is empty."""
    if not utterances:
        raise RamerError(f"{path}: no utterances (every row is empty)")
    groups: dict[str, list[Utterance]] = {}
    for u in utterances:
        groups.setdefault(u.conversation, []).append(u)
    convs = []
    for name, rows in groups.items():
        seen: dict[int, int] = {}
        for u in rows:
            if u.index in seen:
                raise RamerError(
                    f"{_where(path, u.row)}: conversation '{name}' has index {u.index} twice (also row {seen[u.index]})"
                )
            seen[u.index] = u.row
        split, media = rows[0].split, ""
        media_row = 0
        for u in rows:
            if "split" in columns and not u.split:
                raise RamerError(
                    f"{_where(path, u.row)}: empty 'split' (the file has a split column: "
                    f"give train, valid or test on every row)"
                )
            if u.split != split:
                raise RamerError(
                    f"{_where(path, u.row)}: split '{u.split}' differs from '{split}' of row "
                    f"{rows[0].row}; a conversation must lie in one split"
                )
            if u.media:
                if media and u.media != media:
                    raise RamerError(
                        f"{_where(path, u.row)}: media '{u.media}' differs from '{media}' of row "
                        f"{media_row}; one media file per conversation"
                    )
                if not media:
                    media, media_row = u.media, u.row
        if not media and all(not u.text for u in rows):
            raise RamerError(
                f"{_where(path, rows[0].row)}: conversation '{name}' is empty: every text is empty and it has no media"
            )
        rows = sorted(rows, key=lambda u: u.index)
        named: dict[str, None] = {}  # the persons in order of first appearance
        for u in rows:
            named.update(dict.fromkeys((u.speaker, *u.present)))
            if len(named) > MAX_PERSONS:
                raise RamerError(
                    f"{_where(path, u.row)}: conversation '{name}' has more than {MAX_PERSONS} persons (its "
                    "speakers and the names in 'present'); each is a row of every sample's scene: split it"
                )
        conv = Conversation(name, rows, list(named), split=split, media_row=media_row, media_name=media)
        if media:
            conv.media = path.parent / media
            for u in rows:
                if u.start is None or u.end is None:
                    raise RamerError(
                        f"{_where(path, u.row)}: conversation '{name}' has media, so every row needs "
                        "'start' and 'end' (seconds)"
                    )
        convs.append(conv)
    return convs


def _not_a_file(media: Path) -> str:
    """Why ``media``, which is no regular file, cannot be read: what is there instead."""
    if media.is_dir():
        return f"is a folder, not an audio or video file ({media})"
    if media.exists():  # a FIFO, socket or device, or a link to one: reading it could wait for ever
        return f"is not a regular file (a pipe, socket or device: {media}); give a file"
    if media.is_symlink():
        return f"is a symbolic link that leads to no file (a loop, or its target is gone: {media})"
    return f"not found (looked for {media})"


def check_media(convs: list[Conversation], path: Path) -> dict[str, int]:
    """Every media file exists and opens; every utterance lies within it. Counts kinds of media."""
    counts = {"audio_video": 0, "audio_only": 0, "video_only": 0}
    for conv in convs:
        if conv.media is None:
            continue
        where = f"{_where(path, conv.media_row)}: media '{conv.media_name}'"
        if not conv.media.is_file():
            raise RamerError(f"{where} {_not_a_file(conv.media)}")
        try:
            info = F.probe_media(conv.media)
        except ValueError as e:
            raise RamerError(f"{where} is not a readable audio or video file ({e})") from None
        if not info["audio"] and not info["video"]:
            raise RamerError(f"{where} holds no audio and no video stream")
        conv.has_video, conv.has_audio = info["video"], info["audio"]
        counts[
            "audio_video" if info["audio"] and info["video"] else "audio_only" if info["audio"] else "video_only"
        ] += 1
        if info["duration"] is not None:
            for u in conv.utterances:
                if u.start >= info["duration"] or u.end > info["duration"] + MEDIA_SLACK:  # type: ignore[operator]
                    raise RamerError(
                        f"{_where(path, u.row)}: utterance {u.start}-{u.end} s lies beyond the end of "
                        f"its media ({info['duration']:.2f} s)"
                    )
    return counts


def label_names(utterances: list[Utterance], columns: set[str], given: list[str] | None, path: Path) -> tuple[str, ...]:
    """``given`` (``--labels``; every name in the file must be one of them) or the sorted names
    found in the ``labels`` column. Labels joined into one name (``_joined_labels``) are refused,
    and so are two names in the file that differ only in case or Unicode form (``Joy``, ``joy``)."""
    if given is not None:
        names = tuple(n.strip() for n in given if n.strip())
        if not names:
            raise RamerError("--labels is empty; give names separated by commas, e.g. --labels joy,anger,sadness")
        if len(set(names)) != len(names):
            raise RamerError(f"--labels names a label twice: {', '.join(names)}")
        for n in names:
            if (c := control_character(n)) is not None:
                raise RamerError(
                    f"--labels names {_short(n)}, with the control character {c} (names are printed to the "
                    "terminal); write it without"
                )
        for u in utterances:
            for n in u.labels:
                if n not in names:
                    _joined_labels(n, names, u.row, path)
                    like = [m for m in names if _name_key(m) == _name_key(n)]
                    hint = f"; it and {like[0]!r} {_how_differ(n, like[0])}" if like else ""
                    raise RamerError(
                        f"{_where(path, u.row)}: unknown label {_short(n)} (labels: {', '.join(names)}){hint}"
                    )
        return names
    if "labels" not in columns:
        raise RamerError(
            f"{path}: no 'labels' column; give the label names with --labels a,b,c (for an unlabelled "
            "file: the names, in order, of the model you will predict with)"
        )
    names = tuple(sorted({n for u in utterances for n in u.labels}))
    if not names:
        raise RamerError(
            f"{path}: the 'labels' column names no emotion on any row; for an unlabelled file to predict on (all "
            "in test), give the label names, in order, of the model you will predict with (--labels a,b,c); to "
            "train on it, fill the column"
        )
    first: dict[str, tuple[str, int]] = {}  # by _name_key: the first spelling and its row
    for u in utterances:
        for n in u.labels:
            _joined_labels(n, names, u.row, path)
            m, row = first.setdefault(_name_key(n), (n, u.row))
            if m != n:
                raise RamerError(
                    f"{_where(path, u.row)}: label {n!r} and label {m!r} of row {row} {_how_differ(n, m)}; they "
                    "would be two labels: write each emotion one way"
                )
    return names


def _name_key(name: str) -> str:
    """What two spellings of one name (a label, a person) share: ``Joy`` and ``joy``, ``é`` composed or
    not, a full-width ``Ａ`` and ``A``, ``no  emotion`` and ``no emotion``, a zero-width space or not."""
    name = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf")
    return " ".join(name.split()).casefold()


def _how_differ(n: str, m: str) -> str:
    """How two spellings of one name (``_name_key``) differ, for the error that names them."""
    if unicodedata.normalize("NFC", n) == unicodedata.normalize("NFC", m):
        return f"are one name in two Unicode forms ({ascii(n)}, {ascii(m)})"
    if unicodedata.normalize("NFC", n).casefold() == unicodedata.normalize("NFC", m).casefold():
        return "differ only in case"
    return "differ only in spacing, character width or invisible characters"


def check_person_names(utterances: list[Utterance], path: Path) -> list[str]:
    """One person of a conversation is written one way: two spellings of a name there (``_name_key``:
    ``Ana`` and ``ana``, ``Ana`` with a zero-width space) would be two persons, rows of their own in
    every scene, with no word; a RamerError naming both rows. Across conversations (where only
    ``--personality`` reads a name) such spellings are a note, returned. A ``present`` name that joins
    persons of its conversation with ``,`` or ``|`` (``Ben, Chloe``) would be a person of its own: a
    RamerError (a name with a space whose parts are persons, ``José María``, is a name)."""
    first: dict[tuple[str, str], tuple[str, int]] = {}  # (conversation, _name_key): the first spelling, its row
    across: dict[str, tuple[str, int]] = {}  # _name_key: the first spelling in the file, its row
    alike: dict[str, str] = {}  # _name_key: what is said of the first other spelling found
    persons: dict[str, set[str]] = {}
    for u in utterances:
        for n in (u.speaker, *u.present):
            persons.setdefault(u.conversation, set()).add(n)
            key = _name_key(n)
            m, row = first.setdefault((u.conversation, key), (n, u.row))
            if m != n:
                raise RamerError(
                    f"{_where(path, u.row)}: person {n!r} and person {m!r} of row {row} {_how_differ(n, m)}; in "
                    f"one conversation they would be two persons: write each person one way"
                )
            m, row = across.setdefault(key, (n, u.row))
            if m != n and key not in alike:
                alike[key] = f"{_short(n)} (row {u.row}) and {_short(m)} (row {row}) {_how_differ(n, m)}"
    for u in utterances:
        for n in u.present:
            parts = [q.strip() for q in re.split(r"[,|]", n) if q.strip()]
            if len(parts) > 1 and all(q in persons[u.conversation] for q in parts):
                raise RamerError(
                    f"{_where(path, u.row)}: 'present' name {n!r} joins the persons "
                    f"{', '.join(repr(q) for q in parts)}; persons in 'present' are separated by ';' "
                    f"('{';'.join(parts)}')"
                )
    if not alike:
        return []
    return [
        f"{plural(len(alike), 'pair')} of person names in different conversations {'is' if len(alike) == 1 else 'are'} "
        f"alike: {first_of(list(alike.values()), 3)}; each is two persons (one name is one person across "
        "conversations, as --personality reads it): if one person, write the name one way"
    ]


def _joined_labels(name: str, names: tuple[str, ...], row: int, path: Path) -> None:
    """A RamerError when ``name`` is labels of ``names`` joined by separators (``joy,anger``,
    ``joy|anger``, ``joy anger``; in a JSON list ``joy;anger``): a slip, not a label of its own.
    A name whose parts are not all labels (``bitter,sweet`` without a label ``sweet``) is kept."""
    parts = [q for q in _SEPARATORS.split(name) if q]
    if len(parts) > 1 and all(q in names for q in parts):
        seps = sorted({r.strip() or " " for r in _SEPARATORS.findall(name.strip())})
        how = (
            f"in JSONL a list holds one name per item ({json.dumps(parts)})"
            if path.suffix.lower() in _JSONL_SUFFIXES
            else f"labels are separated by ';' ('{';'.join(parts)}')"
        )
        raise RamerError(
            f"{_where(path, row)}: label {name!r} joins the labels {', '.join(repr(q) for q in parts)} "
            f"with {' and '.join(repr(q) for q in seps)}; {how}"
        )


def import_task(utterances: list[Utterance], labelled: bool, requested: str, path: Path) -> str:
    """The task an import records: ``requested`` (``--task``), or for ``auto`` ``single_label`` when
    the file is labelled and every sample (target row) has exactly one label, else ``multi_label``.
    Forcing ``single_label`` on a labelled file with a sample of 0 or 2+ labels is an error."""
    if requested not in ("auto", "multi_label", "single_label"):
        raise RamerError(f"--task must be auto, single_label or multi_label, got '{requested}'")
    if requested == "multi_label" or not labelled:
        return "multi_label" if requested == "auto" else requested
    samples = [u for u in utterances if u.target]
    problem = label_count_problem(np.array([len(u.labels) for u in samples], dtype=np.int64))
    if problem is None:
        return "single_label"
    if requested == "single_label":
        first = next(u for u in samples if len(u.labels) != 1)
        raise RamerError(
            f"{path}: --task single_label needs exactly one label per sample (target row); {problem} "
            f"(the first: row {first.row}, labels '{';'.join(first.labels)}')"
        )
    return "multi_label"


def unlabelled_rows_task_note(utterances: list[Utterance], task: str, labelled: bool) -> str | None:
    """A note where ``--task auto`` chose multi-label only because some samples have no label, every
    other one having exactly one: a single-label corpus with a few empty cells trains with a sigmoid
    per label and a threshold, not softmax and the arg-max, with no word of why. None for an
    unlabelled file: no row has a label, and it is for prediction, not training."""
    samples = [u for u in utterances if u.target]
    empty = [u for u in samples if not u.labels]
    if not labelled or task != "multi_label" or not empty or any(len(u.labels) > 1 for u in samples):
        return None
    return (
        f"task: multi_label, as {plural(len(empty), 'sample')} of {len(samples)} "
        f"{'has' if len(empty) == 1 else 'have'} no label (the first: row {empty[0].row}) and every other exactly "
        "one; for single-label training, give those rows their label or leave them out (--task single_label "
        "refuses them)"
    )


def missing_value_names_notes(utterances: list[Utterance]) -> list[str]:
    """A note per column (speaker, present, text) that holds a missing-value word (``nan`` of a pandas
    column cast to text, ``NA`` of R) on some rows: read as a person named so, or words said."""
    notes = []
    for column in ("speaker", "present", "text"):
        rows = [
            u.row
            for u in utterances
            if any(
                v.casefold() in MISSING_VALUE_WORDS
                for v in {"speaker": (u.speaker,), "present": u.present, "text": (u.text.strip(),)}[column]
            )
        ]
        if rows:
            what = "a person of that name" if column != "text" else "the words said"
            notes.append(
                f"column '{column}' holds a word that R, pandas or a spreadsheet writes for an empty cell "
                f"(na, n/a, nan, null) on {plural(len(rows), 'row')} (the first: row {rows[0]}), read as {what}: "
                "if they stand for a missing value, write those cells empty"
            )
    return notes


def assign_splits(convs: list[Conversation], columns: set[str], labelled: bool, seed: int, path: Path) -> dict:
    """An unlabelled file goes to ``test`` whole (the split ``ramer predict`` reads), whatever a
    ``split`` column says (``unlabelled_split_note``): train and valid are for annotated rows. A
    labelled file's splits come from the ``split`` column; else a seeded 80/10/10 split by
    conversation (at least one conversation in each). Returns what was done, for ``meta.json``."""
    if not labelled:
        for c in convs:
            c.split = "test"
        return {"from": "unlabelled: every conversation in test"}
    if "split" in columns:
        return {"from": "column"}
    n = len(convs)
    if n < 3:
        raise RamerError(
            f"{path}: {n} conversation(s): a train / valid / test split by conversation needs at least 3; "
            "give a 'split' column"
        )
    names = sorted(c.name for c in convs)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(SPLIT_FRACTIONS[2] * n))
    n_valid = max(1, round(SPLIT_FRACTIONS[1] * n))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[names[i]] = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
    for c in convs:
        c.split = split_of[c.name]
    return {"from": "seeded", "seed": seed, "fractions": list(SPLIT_FRACTIONS)}


def unlabelled_split_note(convs: list[Conversation], columns: set[str], labelled: bool) -> str | None:
    """A note where an unlabelled file's ``split`` column puts conversations outside ``test``, which
    ``assign_splits`` puts in ``test`` (read before it does): they were left out of what ``ramer
    predict`` reads by default, and a model cannot train or be validated on rows without labels."""
    moved = [c for c in convs if c.split != "test"]
    if labelled or "split" not in columns or not moved:
        return None
    return (
        f"the 'split' column puts {len(moved)} of {plural(len(convs), 'conversation')} in train or valid (the "
        f"first: {_short(moved[0].name)}); an unlabelled file is for prediction: every conversation is in test, "
        "the split ramer predict reads (train and valid are for labelled rows)"
    )


MISSING_VALUE_WORDS = ("na", "n/a", "nan", "null")  # how R, pandas and spreadsheets write an empty cell


def missing_value_labels_note(convs: list[Conversation], names: tuple[str, ...]) -> str | None:
    """A note naming a label found in the file that is a missing-value word (``NA`` of an R export,
    ``nan`` of a pandas column cast to text), with its count of samples: likely a row without an
    emotion, which the table writes as an empty cell. ``None`` when there is none."""
    words = [n for n in names if n.casefold() in MISSING_VALUE_WORDS]
    if not words:
        return None
    count = {n: sum(n in u.labels for c in convs for u in c.utterances if u.target) for n in words}
    what, it = labels_phrase([f"{n!r} ({plural(count[n], 'sample')})" for n in words])
    name = "the name" if len(words) == 1 else "names"
    return (
        f"{what} {name} that R, pandas or a spreadsheet writes for an empty cell: if those rows have no emotion, "
        f"leave their labels cell empty; if {it} is an emotion of this data, name the labels with --labels"
    )


TYPO_ROWS = 3  # a label on fewer rows than this, with a name close to another label's, gets a note


def typo_labels_notes(utterances: list[Utterance], names: tuple[str, ...]) -> list[str]:
    """A note for each label found in the file that is on fewer than ``TYPO_ROWS`` rows and whose
    name is close to that of a label on more rows (``jyo`` beside ``joy``): likely a misspelling,
    which would otherwise be a class of its own without a word. Close: ``difflib``'s ratio at least
    0.75, or the same letters in another order. Only a note: the name may be a real, rare label."""
    rows: dict[str, list[int]] = {n: [] for n in names}
    for u in utterances:
        for n in dict.fromkeys(u.labels):
            rows[n].append(u.row)
    notes = []
    for n in names:
        if len(rows[n]) >= TYPO_ROWS:
            continue
        others = [m for m in names if len(rows[m]) > len(rows[n])]
        near = get_close_matches(n, others, n=1, cutoff=0.75) or [
            m for m in others if sorted(m.casefold()) == sorted(n.casefold())
        ]
        if near:
            on = ", ".join(map(str, rows[n]))
            notes.append(
                f"label {_short(n)} is on {plural(len(rows[n]), 'row')} ({'row' if len(rows[n]) == 1 else 'rows'} "
                f"{on}) and is close to {_short(near[0])} (a typo? fix the table, or give --labels to refuse "
                "unknown names)"
            )
    return notes


def untrained_labels_note(
    convs: list[Conversation], names: tuple[str, ...], labelled: bool, given: bool = True
) -> str | None:
    """A note naming the labels that no sample (target row) of the train split has, with their
    counts in valid and test: a model trained on the set never sees them, so it cannot learn them
    (a label only in test, a name of ``--labels`` the file never uses). ``None`` when every label
    has a train sample, for an unlabelled file, and for a set without train samples (a labelled
    test set, to evaluate a run trained elsewhere). ``given``: the names came from ``--labels``, else
    from the table's ``labels`` column, where a name no sample has is on rows that are no target."""
    if not labelled:
        return None
    counts = {s: dict.fromkeys(names, 0) for s in SPLITS}
    trained = 0
    for c in convs:
        for u in c.utterances:
            if u.target:
                trained += c.split == "train"
                for n in u.labels:
                    counts[c.split][n] += 1
    missing = [n for n in names if counts["train"][n] == 0]
    if not trained or not missing:
        return None
    what, it = labels_phrase([f"{n!r} (valid {counts['valid'][n]}, test {counts['test'][n]})" for n in missing])
    unused = sum(all(counts[s][n] == 0 for s in SPLITS) for n in missing)  # names of --labels the file never uses
    if given and unused == len(missing):
        fix = f"leave {it} out of --labels"
    else:
        fix = "give train samples, or take the label out of the table"
        if unused:  # a name no sample has: of --labels alone, or without it on rows that are no target (target 0)
            fix += (
                " and --labels"
                if given
                else "; a label the table gives only on rows that are no sample (target 0) needs a target row"
            )
    said = f"{what} no sample in the train split: a model trained on this set never sees {it}, so it cannot learn {it}"
    return f"{said} ({fix})"


def sample_id(conv: Conversation, u: Utterance, person: str | None = None) -> str:
    """The id of the sample of row ``u``: ``{conversation}/{index}``; with ``--targets all``, the
    sample of ``person`` at that row, ``{conversation}/{index}/{person}``."""
    return f"{conv.name}/{u.index}" if person is None else f"{conv.name}/{u.index}/{person}"


def check_sample_ids(convs: list[Conversation], everyone: bool, path: Path) -> None:
    """No two samples of a split get one id, checked before any feature is computed. Only a '/' in
    names can do it, with ``--targets all``: conversation 'c', index 1, person '2/x' and
    conversation 'c/1', index 2, person 'x' are both 'c/1/2/x'. The error names both rows."""

    def what(c: Conversation, u: Utterance, q: str | None) -> str:
        return f"conversation '{c.name}', index {u.index}" + ("" if q is None else f", person '{q}'")

    for split in SPLITS:
        seen: dict[str, tuple[Conversation, Utterance, str | None]] = {}
        for c in convs:
            if c.split != split:
                continue
            for u in c.utterances:
                if not u.target:
                    continue
                for q in c.persons if everyone else [None]:
                    sid = sample_id(c, u, q)
                    if sid in seen:
                        c0, u0, q0 = seen[sid]
                        raise RamerError(
                            f"{_where(path, u.row)}: sample id '{sid}' ({what(c, u, q)}) is also the id of row "
                            f"{u0.row} ({what(c0, u0, q0)}) in split {split}; sample ids must be unique: rename "
                            "a conversation or a person so that their '/' do not make the same id"
                        )
                    seen[sid] = (c, u, q)


def read_personality(path: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """A CSV with a header ``person,trait_1,...`` and one row per person: name, then numbers."""
    path = Path(path)
    _need_file(path, "the personality CSV file")
    out: dict[str, np.ndarray] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader, lines = _csv_reader(fh, ",")
            header = next(reader, None)
            if not header or len(header) < 2:
                raise RamerError(f"{_where(path, 1)}: expected a header 'person,trait_1,trait_2,...'")
            for row, cells in _csv_rows(reader, lines, header, path):
                name = unicodedata.normalize("NFC", cells[0].strip())  # as the table's names are read
                if not name:
                    raise RamerError(f"{_where(path, row)}: empty person name")
                if name in out:
                    raise RamerError(f"{_where(path, row)}: person '{name}' appears twice")
                values = []
                for column, cell in zip(header[1:], cells[1:]):
                    try:
                        values.append(float(cell))
                    except ValueError:
                        raise RamerError(
                            f"{_where(path, row)}: the traits of '{name}' are not all numbers: "
                            f"column {_short(column.strip())} holds {_short(cell)}"
                        ) from None
                vec = np.array(values, dtype=np.float64)
                if not np.isfinite(vec).all():
                    raise RamerError(f"{_where(path, row)}: the traits of '{name}' hold a non-finite value")
                out[name] = vec.astype(np.float32)
    except UnicodeDecodeError:
        raise _not_utf8(path, csv_file=True) from None
    if not out:
        raise RamerError(f"{path}: no person rows")
    return out, [h.strip() for h in header[1:]]


# ======================================================================================== features
@dataclass
class ConvFeatures:
    text: np.ndarray  # (S, 384)
    text_ok: np.ndarray  # (S,)
    audio: np.ndarray  # (S, 133)
    audio_ok: np.ndarray  # (S,)
    visual: np.ndarray  # (P, S, 390)
    visual_ok: np.ndarray  # (P, S)
    text_cut: np.ndarray | None = None  # (S,) the text model read only the start of the text (set by the text stage)
    text_cut_at: int = 0  # ... its max_seq_length (word pieces; 0: no text was long enough to ask)


@dataclass
class Report:
    """What an import did: counts for the summary line and meta.json."""

    computed: dict[str, int] = field(default_factory=dict)  # conversations whose features were computed
    reused: dict[str, int] = field(default_factory=dict)  # ... read from the cache
    visual_rules: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    text_cut: int = 0  # utterances whose text the text model cut to its start


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not live(console),
    )


class _Stage:
    """What one feature stage shows while it runs, per utterance: a bar on a terminal; where stderr
    is not one (a log file, CI) plain lines instead, as training prints a line an epoch: one when the
    stage starts, one at most every ``LOG_EVERY`` seconds with how far it is. On both, a line when it
    ends, with its counts and seconds (from ``t0``, as ``Report.seconds``). ``advance(n)``: ``n`` more
    utterances computed."""

    def __init__(self, console, kind: str, convs: list[Conversation], todo: list[Conversation], t0: float):
        self.console, self.kind, self.t0 = console, kind, t0
        self.total = sum(len(c.utterances) for c in todo)
        n = sum(len(c.utterances) for c in convs)
        self.what = f"{kind}: {plural(n, 'utterance')} in {plural(len(convs), 'conversation')}"
        self.cached = n - self.total
        self.done = 0

    def _say(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def __enter__(self) -> _Stage:
        self.log = not live(self.console)
        if self.log and self.total:
            self._say(f"{self.what} ({self.total} to compute, {self.cached} cached) ...")
        self.said = time.perf_counter()
        self.bar = _progress(self.console).__enter__()
        self.task = self.bar.add_task(f"{self.kind}: {self.total} utterances", total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.bar.advance(self.task, n)
        now = time.perf_counter()
        if self.log and now - self.said >= LOG_EVERY and self.done < self.total:
            self._say(f"{self.kind}: {self.done} of {self.total} utterances computed ({now - self.t0:.0f} s)")
            self.said = now

    def __exit__(self, error, *exc) -> None:
        self.bar.__exit__(error, *exc)
        if error is None:  # not after an error or Ctrl-C
            seconds = time.perf_counter() - self.t0
            self._say(f"{self.what}: done in {seconds:.1f} s (computed {self.total}, cached {self.cached})")


def _from_cache(
    kind: str, ks: list[int], convs: list[Conversation], cache: F.FeatureCache, report: Report, key, use
) -> list[tuple[int, str]]:
    """Conversations ``ks`` whose ``kind`` arrays the cache holds under ``key(conversation)`` go to
    ``use(k, arrays)``; returns the others, ``(k, key)``, to compute. Counts both in ``report``."""
    todo = []
    for k in ks:
        k_key = key(convs[k])
        got = cache.get(kind, convs[k].name, k_key)
        if got is None:
            todo.append((k, k_key))
        else:
            use(k, got)
    report.reused[kind], report.computed[kind] = len(ks) - len(todo), len(todo)
    return todo


def _media_stage(
    kind: str,
    ks: list[int],
    convs: list[Conversation],
    cache: F.FeatureCache,
    console,
    report: Report,
    path: Path,
    key,
    compute,
    use,
) -> None:
    """One media feature stage (``audio`` or ``visual``) over conversations ``ks``: arrays from the
    cache where ``key(conversation)`` matches, else ``compute(conversation, advance)`` (cached;
    ``advance(n)`` as ``n`` more of its utterances are done); each conversation's arrays go to
    ``use(k, arrays)``. A decoding failure names the media's row."""
    t0 = time.perf_counter()
    todo = _from_cache(kind, ks, convs, cache, report, key, use)
    if not ks:  # no conversation has this kind of media: nothing to say
        return
    what = "video" if kind == "visual" else kind
    with _Stage(console, kind, [convs[k] for k in ks], [convs[k] for k, _ in todo], t0) as stage:
        for k, k_key in todo:
            c = convs[k]
            before = stage.done
            try:
                arrays = compute(c, stage.advance)
            except ValueError as e:
                raise RamerError(
                    f"{_where(path, c.media_row)}: media '{c.media_name}': {what} could not be decoded ({e})"
                ) from None
            except SystemError as e:
                if _interrupted(e):  # Ctrl-C inside librosa's numba code comes out as a SystemError
                    raise KeyboardInterrupt from None
                raise
            cache.put(kind, c.name, k_key, arrays)
            use(k, arrays)
            stage.advance(before + len(c.utterances) - stage.done)  # those not counted (no stream, cut short)


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` was caused by a KeyboardInterrupt (numba wraps one raised in its callbacks)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def cut_texts(texts: list[str]) -> tuple[np.ndarray, int]:
    """Per text, whether the text model cuts it to its start (more word pieces than its
    ``max_seq_length``), and that limit (0 when no text was long enough to ask the model). Only
    texts over ``WHOLE_TEXT_CHARS`` characters are tokenized: shorter ones cannot be cut. A text over
    ``features.TEXT_READ_CHARS`` characters is cut (``features.model_text``) whatever its pieces."""
    flags = np.zeros(len(texts), dtype=bool)
    ask = [i for i, t in enumerate(texts) if len(t) > WHOLE_TEXT_CHARS]
    if not ask:
        return flags, 0
    pieces, limit = F.text_pieces([texts[i] for i in ask])
    if 3 * WHOLE_TEXT_CHARS + 2 > limit:  # a model that reads fewer pieces: ask about every text
        ask = list(range(len(texts)))
        pieces, limit = F.text_pieces(texts)
    flags[ask] = (np.asarray(pieces) > limit) | (np.array([len(texts[i]) for i in ask]) > F.TEXT_READ_CHARS)
    return flags, limit


def compute_features(
    convs: list[Conversation], cache: F.FeatureCache, console, report: Report, path: Path
) -> list[ConvFeatures]:
    """Text, audio and visual features of every conversation, from the cache where the inputs did
    not change; only what changed is computed."""
    out = []
    for c in convs:
        S, P = len(c.utterances), len(c.persons)
        out.append(
            ConvFeatures(
                np.zeros((S, F.TEXT_DIM), np.float32),
                np.zeros(S, bool),
                np.zeros((S, F.AUDIO_DIM), np.float32),
                np.zeros(S, bool),
                np.zeros((P, S, F.VISUAL_DIM), np.float32),
                np.zeros((P, S), bool),
            )
        )

    # --- text: every changed conversation's texts, each conversation in batches of its own
    t0 = time.perf_counter()
    version = F.text_model_version()

    uncounted: list[int] = []  # entries written before they kept which texts were cut: counted now

    def set_text(k: int, arrays: dict) -> None:
        out[k].text, out[k].text_ok = arrays["features"], arrays["present"]
        cut, at = arrays.get("cut"), arrays.get("cut_at")
        sound = cut is not None and cut.dtype == np.bool_ and cut.shape == out[k].text_ok.shape
        if not sound or at is None or at.shape != () or at.dtype.kind not in "iu":
            uncounted.append(k)
        else:
            out[k].text_cut, out[k].text_cut_at = cut, int(at)

    def text_key(c: Conversation) -> str:  # entries of shared batches (other last digits) are not reused
        return cache.key("text", f"{version}; batched per conversation", [u.text for u in c.utterances])

    def keep_text(k: int) -> None:
        """Which of conversation ``k``'s texts the model cut to their start (its max_seq_length),
        counted once, and its entry written to the cache: as soon as it is computed, so that a
        Ctrl-C later keeps it."""
        c, f = convs[k], out[k]
        rows = [s for s, u in enumerate(c.utterances) if u.text]
        flags, limit = cut_texts([c.utterances[s].text for s in rows])
        f.text_cut, f.text_cut_at = np.zeros(len(c.utterances), dtype=bool), limit
        f.text_cut[rows] = flags
        arrays = {"features": f.text, "present": f.text_ok, "cut": f.text_cut, "cut_at": np.int64(f.text_cut_at)}
        cache.put("text", c.name, text_key(c), arrays)

    pending = _from_cache("text", list(range(len(convs))), convs, cache, report, key=text_key, use=set_text)
    with _Stage(console, "text", convs, [convs[k] for k, _ in pending], t0) as stage:
        for k, _ in pending:  # each conversation's texts in batches of their own: a batch is padded to its
            # longest text, which moves the last digits, so features computed beside other conversations'
            # would differ from the same conversation's cached ones (the cache's key is its texts alone)
            texts = [(s, u.text) for s, u in enumerate(convs[k].utterances) if u.text]
            if texts:
                emb = F.embed_texts([t for _, t in texts], advance=stage.advance)
                for (s, _), vec in zip(texts, emb):
                    out[k].text[s] = vec
                    out[k].text_ok[s] = True
            keep_text(k)
        for k in uncounted:  # entries of an earlier ramer, which kept no cut flags
            keep_text(k)
        cut_rows = [u.row for c, f in zip(convs, out) for u, cut in zip(c.utterances, f.text_cut) if cut]
        report.text_cut = len(cut_rows)
        if cut_rows:
            n, limit = len(cut_rows), max(f.text_cut_at for f in out)
            one = n == 1
            report.notes.append(
                f"text: {n} utterance{'' if one else 's'} {'is' if one else 'are'} longer than the {limit} word "
                f"pieces the text model reads: only {'its' if one else 'their'} start gives "
                f"{'its' if one else 'their'} features (the first: row {min(cut_rows)})"
            )
    report.seconds["text"] = round(time.perf_counter() - t0, 3)

    # --- audio: per conversation with media
    t0 = time.perf_counter()
    with_media = [k for k, c in enumerate(convs) if c.media is not None]

    def set_audio(k: int, arrays: dict) -> None:
        out[k].audio, out[k].audio_ok = arrays["features"], arrays["present"]

    def audio(c: Conversation, advance) -> dict:
        features, present = F.audio_features(c.media, c.windows, advance=advance)
        return {"features": features, "present": present}

    _media_stage(
        "audio",
        with_media,
        convs,
        cache,
        console,
        report,
        path,
        key=lambda c: cache.key("audio", F.AUDIO_VERSION, F.media_identity(c.media), c.windows),
        compute=audio,
        use=set_audio,
    )
    # media whose sound stops before its end (a video whose sound stopped, a file cut short, one of no
    # known length) pass check_media: the utterances past the decoded audio stay without, in a note
    silent = [
        u.row for k in with_media if convs[k].has_audio for u, ok in zip(convs[k].utterances, out[k].audio_ok) if not ok
    ]
    if silent:
        n = len(silent)
        report.notes.append(
            f"audio: {n} utterance{' lies' if n == 1 else 's lie'} past the end of the audio their media holds "
            f"(its sound stops early, or the file is cut short), so {'its' if n == 1 else 'their'} audio is absent "
            f"(the first: row {min(silent)})"
        )
    report.seconds["audio"] = round(time.perf_counter() - t0, 3)

    # --- visual: per conversation whose media has a video stream, with the face extra
    t0 = time.perf_counter()
    videos = [k for k in with_media if convs[k].has_video]
    if videos and not F.face_available():
        report.notes.append(
            f"visual: {len(videos)} conversation(s) have video, but the face extra is not installed, "
            f"so visual stays absent; for face features: {F.FACE_HINT}"
        )
        videos = []

    def set_visual(k: int, arrays: dict) -> None:
        if "features" in arrays:  # no face stream at all: visual stays absent
            out[k].visual, out[k].visual_ok = arrays["features"], arrays["present"]
        for r, n in json.loads(str(arrays["rules"])).items():
            report.visual_rules[r] = report.visual_rules.get(r, 0) + n

    def visual(c: Conversation, advance) -> dict:
        got = F.visual_features(c.media, c.windows, c.speakers, c.others, len(c.persons), advance=advance)
        if got is None:
            return {"rules": np.str_("{}")}
        features, present, rules = got
        return {"features": features, "present": present, "rules": np.str_(json.dumps(rules))}

    _media_stage(
        "visual",
        videos,
        convs,
        cache,
        console,
        report,
        path,
        key=lambda c: cache.key(
            "visual", F.VISUAL_VERSION, F.media_identity(c.media), c.windows, c.speakers, c.others, len(c.persons)
        ),
        compute=visual,
        use=set_visual,
    )
    report.seconds["visual"] = round(time.perf_counter() - t0, 3)
    return out


# =========================================================================================== build
def scene_tokens(
    convs: list[Conversation], feats: list[ConvFeatures], scenes: list[tuple[int, int, int]], offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The token arrays of samples whose scenes are ``scenes`` (conversation k, its utterances a to
    b, every person of it): sample i's tokens, person by person, from ``offsets[i]``. Text and
    audio lie only on each utterance's speaker row. The features come packed, as the native format
    stores them: ``(text, audio, visual, present, rows)``, each feature array holding only the rows
    of the tokens where its modality is present, in token order, and ``rows`` the token -> row map of
    each modality (``SceneStore.feature_rows``). The presence mask is filled first, then each array
    is allocated once at its packed size and filled in place: most tokens of a persons x segments
    scene lack most modalities, so the split's features are a fraction of its dense form."""
    m = int(offsets[-1])
    present = np.zeros((m, 3), bool)
    spks = [np.asarray(c.speakers, dtype=np.int64) for c in convs]

    def cells(i: int, k: int, a: int, b: int):
        """Sample i's speaker rows (each utterance's token) and its whole block of tokens."""
        o, w = int(offsets[i]), b - a
        return o + spks[k][a:b] * w + np.arange(w), np.arange(o, o + feats[k].visual.shape[0] * w)

    for i, (k, a, b) in enumerate(scenes):
        f, (spoken, block) = feats[k], cells(i, k, a, b)
        present[spoken, 0] = f.text_ok[a:b]
        present[spoken, 1] = f.audio_ok[a:b]
        present[block, 2] = f.visual_ok[:, a:b].reshape(-1)
    rows = {name: row_map(present[:, j]) for j, name in enumerate(MODALITIES)}
    text, audio, visual = (
        np.zeros((int(present[:, j].sum()), d), np.float32)
        for j, d in enumerate((F.TEXT_DIM, F.AUDIO_DIM, F.VISUAL_DIM))
    )
    for i, (k, a, b) in enumerate(scenes):
        f, (spoken, block) = feats[k], cells(i, k, a, b)
        ok = f.text_ok[a:b]
        text[rows["text"][spoken[ok]]] = f.text[a:b][ok]
        ok = f.audio_ok[a:b]
        audio[rows["audio"][spoken[ok]]] = f.audio[a:b][ok]
        ok = f.visual_ok[:, a:b].reshape(-1)
        visual[rows["visual"][block[ok]]] = f.visual[:, a:b].reshape(-1, F.VISUAL_DIM)[ok]
    return text, audio, visual, present, rows


def build_split(
    convs: list[Conversation],
    feats: list[ConvFeatures],
    names: tuple[str, ...],
    person_ids: dict[str, int],
    personality: dict[str, np.ndarray] | None,
    d_pers: int,
    context: int,
    source: str,
    everyone: bool = False,
) -> tuple[SceneStore, list[dict]]:
    """The samples of ``convs`` (one per target row; with ``everyone``, one per person of the
    conversation at each target row, the listeners as non-speaker targets) as a SceneStore, and
    per conversation what the timeline needs (its persons, index values, first sample and each
    sample's segment)."""
    # first the samples' scenes (which persons and utterances each holds), then the token arrays,
    # each allocated once at its final size (scene_tokens): the peak stays near the arrays themselves
    scenes = []  # (conversation k, first utterance a, end b) per sample
    grids, targets, roles, labels, ids, character, pers, pers_ok = [], [], [], [], [], [], [], []
    items = []
    for k, c in enumerate(convs):
        P, S = len(c.persons), len(c.utterances)
        spk = np.asarray(c.speakers)
        chars = [person_ids[q] for q in c.persons]
        first = len(ids)
        tsegs = []
        for s, u in enumerate(c.utterances):
            if not u.target:
                continue
            a, b = max(0, s - context), min(S, s + context + 1)
            for p in range(P) if everyone else [int(spk[s])]:
                scenes.append((k, a, b))
                grids.append((P, b - a))
                targets.append((p, s - a))
                speaking = p == spk[s]
                roles.append(ROLE_SPEAKER if speaking else ROLE_NONSPEAKER)
                labels.append([speaking and n in u.labels for n in names])  # listeners: no labels (unlabelled only)
                ids.append(sample_id(c, u, c.persons[p] if everyone else None))
                character.extend(chars)
                if personality is not None:
                    for q in c.persons:
                        vec = personality.get(q)
                        pers.append(vec if vec is not None else np.zeros(d_pers, np.float32))
                        pers_ok.append(vec is not None)
                tsegs.append(s)
        items.append(
            {
                "name": c.name,
                "split": c.split,
                "persons": list(c.persons),
                "index": [u.index for u in c.utterances],
                "first": first,
                "targets": tsegs,
            }
        )
    n = len(ids)
    grid = np.asarray(grids, dtype=np.int64).reshape(n, 2)
    sizes = grid[:, 0] * grid[:, 1]
    token_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    text, audio, visual, present, rows = scene_tokens(convs, feats, scenes, token_offsets)

    store = SceneStore(
        text=text,
        audio=audio,
        visual=visual,
        present=present,
        token_offsets=token_offsets,
        grid=grid.astype(np.int32),
        labels=np.asarray(labels, dtype=np.uint8).reshape(n, len(names)),
        target=np.asarray(targets, dtype=np.int32).reshape(n, 2),
        role=np.asarray(roles, dtype=np.int8).reshape(n),
        person_offsets=np.concatenate([[0], np.cumsum(grid[:, 0])]).astype(np.int64),
        character=np.asarray(character, dtype=np.int32),
        label_names=names,
        ids=ids,
        personality=None if personality is None else np.asarray(pers, dtype=np.float32).reshape(-1, d_pers),
        personality_present=None if personality is None else np.asarray(pers_ok, dtype=bool),
        source=source,
        feature_rows=rows,
    )
    return store, items


# ========================================================================================== import
def import_conversations(
    path: str | Path,
    out: str | Path,
    labels: list[str] | None = None,
    personality: str | Path | None = None,
    context: int = DEFAULT_CONTEXT,
    seed: int = 0,
    console=None,
    targets: str = "rows",
    task: str = "auto",
) -> dict:
    """Read a conversation table, compute (or reuse) its features, write the native format to
    ``out`` (features cached under ``out/cache``). Returns the written ``meta.json`` contents.

    ``targets``: ``rows`` (a sample per target row: its speaker) or ``all`` (at each target row,
    a sample for every person of the conversation; the listeners are non-speaker targets, whose
    emotions RAMer infers from context). ``all`` needs an unlabelled file: the table gives no
    labels for listeners. ``task``: what ``meta.json`` records (``import_task``): ``auto``,
    ``single_label`` or ``multi_label``."""
    console = console or plain_console()
    path, out = Path(path), Path(out)
    if context < 0:
        raise RamerError(f"--context must be >= 0, got {context}")
    if seed < 0:
        raise RamerError(f"--seed must be >= 0, got {seed}")
    check_dataset_folder(out)  # the split folders too, before meta.json goes
    if targets not in ("rows", "all"):
        raise RamerError(f"--targets must be 'rows' or 'all', got '{targets}'")
    utterances, columns = read_table(path)
    digest = table_digest(path)  # of the file as it was just read, not as it is after the feature work
    # a labels column that names no emotion on any row (empty cells, JSON null) annotates nothing: the
    # file is unlabelled, as one without the column (all in test, no seeded split; eval refuses it)
    labelled = any(u.labels for u in utterances)
    if targets == "all" and labelled:
        raise RamerError(
            f"{path}: --targets all makes samples of listeners, whose emotions the table does not "
            "give; use it on an unlabelled file, for prediction (no 'labels' column, or one that names no emotion)"
        )
    person_notes = check_person_names(utterances, path)
    convs = group_conversations(utterances, path, columns)
    names = label_names(utterances, columns, labels, path)
    asked = task
    task = import_task(utterances, labelled, task, path)
    split_note = unlabelled_split_note(convs, columns, labelled)
    split_info = assign_splits(convs, columns, labelled, seed, path)
    check_sample_ids(convs, targets == "all", path)
    media_counts = check_media(convs, path)
    pers_map, traits = (None, [])
    if personality is not None:
        pers_map, traits = read_personality(personality)

    report = Report()
    if not any(c.media is not None for c in convs):
        report.notes.append(
            "no media: text only (add a 'media' column with each conversation's audio or video "
            f"file, and start/end, for audio features; for faces also {F.FACE_HINT})"
        )
    if split_note:
        report.notes.append(split_note)
    if note := untrained_labels_note(convs, names, labelled, given=labels is not None):
        report.notes.append(note)
    if labels is None and (note := missing_value_labels_note(convs, names)):
        report.notes.append(note)
    if asked == "auto" and (note := unlabelled_rows_task_note(utterances, task, labelled)):
        report.notes.append(note)
    report.notes.extend(missing_value_names_notes(utterances))
    report.notes.extend(person_notes)
    if labels is None:
        report.notes.extend(typo_labels_notes(utterances, names))
    out.mkdir(parents=True, exist_ok=True)
    # meta.json of a set imported before stays until bundle.save writes over it: a media file that
    # fails to decode, or Ctrl-C, in the feature stages leaves that set as it was
    cache = F.FeatureCache(out / "cache")
    feats = compute_features(convs, cache, console, report, path)
    pruned = cache.prune()

    persons = sorted({q for c in convs for q in c.persons})
    person_ids = {q: i for i, q in enumerate(persons)}
    d_pers = len(traits)
    splits, items = {}, []
    for split in SPLITS:
        ks = [k for k, c in enumerate(convs) if c.split == split]
        store, its = build_split(
            [convs[k] for k in ks],
            [feats[k] for k in ks],
            names,
            person_ids,
            pers_map,
            d_pers,
            context,
            f"{path}[{split}]",
            everyone=targets == "all",
        )
        splits[split] = store
        items.extend(its)
    counts = {
        "conversations": len(convs),
        "utterances": len(utterances),
        "samples": {s: len(st) for s, st in splits.items()},
        "persons": len(persons),
        "speaker_text_present": int(sum(f.text_ok.sum() for f in feats)),
        "text_truncated": report.text_cut,
        "speaker_audio_present": int(sum(f.audio_ok.sum() for f in feats)),
        "person_segments_with_visual": int(sum(f.visual_ok.sum() for f in feats)),
        "person_segments": int(sum(f.visual_ok.size for f in feats)),
        "media": media_counts,
        "visual_rules": dict(sorted(report.visual_rules.items())),
    }
    if pers_map is not None:
        counts["persons_without_personality"] = sorted(q for q in persons if q not in pers_map)
        unused = [q for q in pers_map if q not in person_ids]
        counts["personality_rows_unused"] = len(unused)
        counts["personality_rows_unused_first"] = unused[:SHOWN_NAMES]  # in the file's order
    info = {
        # absolute: `ramer view` reads the table back for the texts, from wherever it is run
        "source_files": [str(path.resolve())] + ([str(Path(personality).resolve())] if personality is not None else []),
        "source_sha256": digest,  # the table's texts are shown while it is this file
        "nonfinite_replaced": {"text": 0, "audio": 0, "visual": 0},
        FORMAT: {
            "labelled": labelled,
            "label_names_from": "--labels" if labels is not None else "file",
            "context": context,
            "targets": targets,
            "split": split_info,
            "features": {
                "text": f"{F.text_model_version()}, {F.TEXT_DIM}-d, speaker only",
                "audio": f"{F.AUDIO_VERSION}, {F.AUDIO_DIM}-d, speaker only",
                "visual": f"{F.VISUAL_VERSION}, {F.VISUAL_DIM}-d, where a face is reliably assigned",
            },
            "personality_traits": traits,
            "persons": persons,
            "counts": counts,
            "cache": {"computed": report.computed, "reused": report.reused, "pruned": pruned},
            "seconds": report.seconds,
            "notes": report.notes,
            "items": items,
        },
    }
    bundle = DataBundle(splits, names, FORMAT, str(path), info, task)
    bundle.save(out)
    return json.loads((out / "meta.json").read_text())


def summary_lines(meta: dict, notes: bool = True) -> list[str]:
    """A few lines for people: what was imported and what the cache saved; then, with ``notes``, the
    import's notes (``note_lines``: ``ramer data import`` prints those to stderr, the rest to stdout)."""
    info = meta["info"][FORMAT]
    c = info["counts"]
    lines = [
        f"{c['conversations']} conversations, {c['utterances']} utterances, {c['persons']} persons; "
        f"labels ({len(meta['label_names'])}): {', '.join(meta['label_names'])}"
        + ("" if info["labelled"] else " (unlabelled)")
        + f"; task: {meta.get('task', 'multi_label')}",
        "samples: "
        + ", ".join(f"{s} {n}" for s, n in c["samples"].items())
        + f" (split: {info['split']['from']}"
        + (f", seed {info['split']['seed']})" if "seed" in info["split"] else ")"),
        f"present: text {c['speaker_text_present']} / audio {c['speaker_audio_present']} of {c['utterances']} speaker "
        f"turns; visual {c['person_segments_with_visual']} of {c['person_segments']} person-segments",
    ]
    cache = info["cache"]
    lines.append(
        "features: "
        + ", ".join(
            f"{m} computed {cache['computed'].get(m, 0)} / cached {cache['reused'].get(m, 0)} conversations"
            for m in ("text", "audio", "visual")
        )
    )
    return lines + note_lines(meta) if notes else lines


def note_lines(meta: dict) -> list[str]:
    """The import's notes (what it could not do, text cut short) and the persons and rows the
    personality file left out: what a person should read, not the import's result."""
    info = meta["info"][FORMAT]
    c = info["counts"]
    lines = ["note: " + n for n in info["notes"]]
    missing, unused = c.get("persons_without_personality", []), c.get("personality_rows_unused", 0)
    first = c.get("personality_rows_unused_first", [])  # not in a meta.json of an older ramer
    said = []
    if missing:
        has = "person has" if len(missing) == 1 else "persons have"
        said.append(f"{len(missing)} {has} no row (no personality): {first_of(missing, SHOWN_NAMES)}")
    if unused:
        name = "row names" if unused == 1 else "rows name"
        said.append(
            f"{unused} {name} nobody in the table" + (f": {first_of(first, SHOWN_NAMES, unused)}" if first else "")
        )
    return lines + (["personality: " + "; ".join(said)] if said else [])


# ========================================================================================= timeline
def label_codes(names: tuple[str, ...] | list[str]) -> list[str]:
    """Short unique codes of label names: the shortest prefix of at least 3 letters that no other
    name shares (the whole name when shorter)."""
    codes = []
    for n in names:
        k = min(3, len(n))
        while k < len(n) and any(o != n and o.startswith(n[:k]) for o in names):
            k += 1
        codes.append(n[:k])
    return codes


def format_timelines(bundle: DataBundle, split: str, probs: np.ndarray, threshold, width: int = 120) -> str:
    """Per conversation of ``split``: one row per person, one column per utterance (headed by its
    ``index``); a cell holds the code of the top emotion whose score passes the threshold (for
    ``"argmax"``: the top emotion, the one label decided), ``-`` when none passes, and ``.`` where
    the person is not a target (a listener unless imported with ``targets="all"``, or a row with
    target 0). The legend's line says which of these the run's decision gives."""
    info = bundle.info.get(FORMAT) or {}
    names = tuple(bundle.label_names)
    codes = label_codes(names)
    chosen = decide(probs, threshold).astype(bool)  # (n, C)
    store = bundle.splits[split]
    cell = (
        "the one label decided (arg-max: the most probable; a single-label run)"
        if isinstance(threshold, str) and threshold == ARGMAX
        else "the most probable of the labels chosen, all of them in the predictions file; - none passes the threshold"
    )
    lines = [
        "legend: "
        + ", ".join(f"{c}={n}" if c != n else n for c, n in zip(codes, names))
        + f"  (a cell: {cell}, . not a target)"
    ]
    for item in info.get("items", []):
        if item["split"] != split:
            continue
        persons, index = item["persons"], item["index"]
        S = len(index)
        cells = [["."] * S for _ in persons]
        for j, s in enumerate(item["targets"]):
            i = item["first"] + j
            p = int(store.target[i][0])
            ok = chosen[i]
            cells[p][s] = codes[int(np.argmax(np.where(ok, probs[i], -np.inf)))] if ok.any() else "-"
        head = [str(x) for x in index]
        cw = max([len(x) for x in head] + [len(c) for c in codes] + [1]) + 1
        nw = max(len(q) for q in persons) + 2
        per_block = max(1, (width - nw) // cw)
        lines.append("")
        lines.append(
            f"{item['name']}  ({len(persons)} person{'s' * (len(persons) != 1)} x {S} utterance{'s' * (S != 1)})"
        )
        for a in range(0, S, per_block):
            b = min(S, a + per_block)
            lines.append(" " * nw + "".join(h.rjust(cw) for h in head[a:b]))
            for q, row in zip(persons, cells):
                lines.append(q.ljust(nw) + "".join(x.rjust(cw) for x in row[a:b]))
    return "\n".join(lines)
