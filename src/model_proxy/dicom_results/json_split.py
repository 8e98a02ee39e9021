"""A result's JSON split into its instances as it arrives, without parsing it whole.

A result is nested study -> series -> instance (docs/compatibility.md §6)::

    {"<study>": {"<series>": {"<sop>": {"segments": [...]}, "metadata": [...]}}}

:class:`InstanceSplitter` is fed the text in chunks of any size and hands back
each member of a series object, ``(study, series, key, raw JSON text of its
value)``, as soon as its value has ended: one instance's text at a time, never
the whole result. Only the three outer levels are tokenised (keys, colons,
commas); inside a value only brackets and strings are followed, found with
numpy comparisons over the text, so a 512x512 mask costs some thousand
positions, not a quarter of a million tokens.

Why not ijson: it yields one event (or one Python object) per number, a
billion for a 2,000-slice, two-segment 512x512 result; the value text handed to
orjson per instance parses at C speed.
"""

from __future__ import annotations

import re

import numpy as np
import orjson

_OUTER = re.compile(rb'[{}\[\]",:]|[^\s{}\[\]",:]')
# Inside a value: +1 for an opening bracket, -1 for a closing one, 0 for a quote.
_DEPTH_CHANGE = np.zeros(256, dtype=np.int8)
_DEPTH_CHANGE[list(b"{[")] = 1
_DEPTH_CHANGE[list(b"}]")] = -1
_STRING_END = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb"[,}\s]")
_OPEN = frozenset(b"{[")


class SplitError(ValueError):
    """The text is not a JSON object nested study -> series -> members."""


class EntryTooLarge(SplitError):
    """One member's value is larger than the splitter may hold."""


Member = tuple[str, str, str, bytes]


class InstanceSplitter:
    """Push-style: ``feed`` chunks, collect finished members, then ``close``.

    ``max_value_bytes`` bounds the text of one member held at once.

    >>> splitter = InstanceSplitter(max_value_bytes=1000)
    >>> splitter.feed(b'{"1.2": {"3.4": {"5.6": {"segm')
    []
    >>> splitter.feed(b'ents": []}, "metadata": [1]}}}')
    [('1.2', '3.4', '5.6', b'{"segments": []}'), ('1.2', '3.4', 'metadata', b'[1]')]
    >>> splitter.close()
    """

    def __init__(self, *, max_value_bytes: int) -> None:
        self._max_value_bytes = max_value_bytes
        self._buffer = bytearray()
        self._pos = 0
        # The keys of the open objects (study, series), and what comes next at
        # the current outer level: "key", "colon", "value", "comma" or "end".
        self._keys: list[str] = []
        self._expect = "value"
        self._depth = 0  # outer objects open: 0 before the document, 1..3
        self._value_start: int | None = None  # a member's value is being read
        self._nesting = 0  # brackets open inside that value
        self._just_opened = False  # '}' may close an object with no members
        self._done = False

    def feed(self, chunk: bytes) -> list[Member]:
        self._buffer += chunk
        members: list[Member] = []
        while self._step(members):
            pass
        # Drop what was consumed, keeping the value being read.
        keep = self._pos if self._value_start is None else self._value_start
        if keep:
            del self._buffer[:keep]
            self._pos -= keep
            if self._value_start is not None:
                self._value_start = 0
        if self._value_start is not None:
            self._check_size(len(self._buffer))
        return members

    def close(self) -> None:
        if not self._done or self._buffer[self._pos :].strip():
            raise SplitError("the result ends early or has text after its end")

    def _step(self, members: list[Member]) -> bool:
        if self._value_start is not None:
            return self._step_value(members)
        found = _OUTER.search(self._buffer, self._pos)
        if found is None:
            self._pos = len(self._buffer)
            return False
        byte = self._buffer[found.start()]
        if self._done:
            raise SplitError("text after the end of the result")
        if self._expect == "key":
            if byte == ord("}") and self._just_opened:
                self._pos = found.end()
                self._close_object()
                return True
            if byte != ord('"'):
                raise SplitError("expected a key")
            key = self._read_string(found.start())
            if key is None:
                return False
            self._keys.append(key)
            self._expect = "colon"
            return True
        if self._expect == "colon":
            if byte != ord(":"):
                raise SplitError("expected ':' after a key")
            self._pos = found.end()
            self._expect = "value"
            return True
        if self._expect == "comma":
            self._pos = found.end()
            if byte == ord(","):
                self._expect = "key"
            elif byte == ord("}"):
                self._close_object()
            else:
                raise SplitError("expected ',' or '}' between entries")
            return True
        # A value: an object of the outer levels opens one more, deeper ones are read whole.
        if byte == ord("{") and self._depth < 3:
            self._pos = found.end()
            self._depth += 1
            self._expect = "key"
            self._just_opened = True
            return True
        if self._depth == 0:
            raise SplitError("the result is not a JSON object")
        self._value_start = found.start()
        self._pos = found.start()
        self._nesting = 0
        return True

    def _close_object(self) -> None:
        self._just_opened = False
        self._depth -= 1
        if self._depth == 0:
            self._done = True
            return
        self._keys.pop()
        self._expect = "comma"

    def _read_string(self, start: int) -> str | None:
        """The JSON string at ``start`` (its quote), consumed; None if not all here yet."""
        end = self._string_end(start + 1)
        if end is None:
            return None
        self._just_opened = False
        self._pos = end
        try:
            text = orjson.loads(bytes(self._buffer[start:end]))
        except orjson.JSONDecodeError as exc:
            raise SplitError("a key is not a valid JSON string") from exc
        assert isinstance(text, str)
        return text

    def _string_end(self, pos: int) -> int | None:
        """The index after the closing quote of a string whose text starts at ``pos``."""
        while True:
            found = _STRING_END.search(self._buffer, pos)
            if found is None:
                return None
            if self._buffer[found.start()] == ord('"'):
                return found.end()
            pos = found.start() + 2  # an escape: skip the escaped character
            if pos > len(self._buffer):
                return None

    def _step_value(self, members: list[Member]) -> bool:
        assert self._value_start is not None
        buffer = self._buffer
        if self._nesting == 0 and buffer[self._value_start] not in _OPEN:
            # A scalar: it ends at the next ',' or '}' outside a string.
            if buffer[self._value_start] == ord('"'):
                end = self._string_end(self._value_start + 1)
                if end is None:
                    return False
            else:
                found = _SCALAR_END.search(buffer, self._value_start)
                if found is None:
                    return False
                end = found.start()
            self._finish_value(end, members)
            return True
        return self._follow_brackets(members)

    def _follow_brackets(self, members: list[Member]) -> bool:
        """Reads an object or array value on to its closing bracket, or to the
        end of what is here (then False; it goes on from there when fed more)."""
        buffer = self._buffer
        # The brackets and quotes from here on, found by numpy: a 512x512 mask is
        # half a megabyte of digits and commas with a thousand brackets, too many
        # for a regular expression's matches (Python objects, one each).
        base = self._pos
        codes = np.frombuffer(bytes(buffer[base:]), dtype=np.uint8)
        folded = codes | 0x20  # "[" and "]" as "{" and "}": two comparisons fewer
        marks = np.flatnonzero((folded == 0x7B) | (folded == 0x7D) | (codes == 0x22))
        changes = _DEPTH_CHANGE[codes[marks]]
        quotes = np.flatnonzero(changes == 0)
        first = 0  # of marks, the first not yet followed
        for quote in [*quotes.tolist(), len(marks)]:
            if quote < first:
                continue  # a quote inside a string already skipped
            depth = self._nesting + np.cumsum(changes[first:quote], dtype=np.int64)
            closed = np.flatnonzero(depth == 0)
            if len(closed):
                self._pos = base + int(marks[first + int(closed[0])]) + 1
                self._nesting = 0
                self._finish_value(self._pos, members)
                return True
            if len(depth):
                self._nesting = int(depth[-1])
            if quote == len(marks):
                break
            start = base + int(marks[quote])
            end = self._string_end(start + 1)
            if end is None:
                self._pos = start  # the string is read again when the rest is here
                return False
            first = int(np.searchsorted(marks, end - base))
        self._pos = len(buffer)
        return False

    def _check_size(self, size: int) -> None:
        if size > self._max_value_bytes:
            raise EntryTooLarge(
                f"one entry of the result is larger than {self._max_value_bytes} bytes"
            )

    def _finish_value(self, end: int, members: list[Member]) -> None:
        assert self._value_start is not None
        self._check_size(end - self._value_start)
        value = bytes(self._buffer[self._value_start : end])
        key = self._keys.pop()
        if self._depth == 3:
            members.append((self._keys[0], self._keys[1], key, value))
        # Members of the two outer levels that are not objects (a study's
        # "metadata") are skipped: nothing is converted from them here.
        self._value_start = None
        self._pos = end
        self._expect = "comma"
