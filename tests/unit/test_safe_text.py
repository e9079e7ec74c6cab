"""tracker.safe_text: how a /proc string leaves crwatch, for every exit (unit tests)."""
from __future__ import annotations

import json
import random
import re
import sqlite3
import xml.etree.ElementTree as ET

from tracker.safe_text import (
    from_column,
    json_bytes,
    json_text,
    to_column,
    unicode_text,
    visible,
    visible_all,
)

# What procfs makes of the bytes b"<s>\x1b[31m\xff\n\xfe" (a name that is not UTF-8)
HOSTILE = b"<s>\x1b[31m\xff\n\xfe".decode("utf-8", "surrogateescape")
# A character XML 1.0 allows (its Char production)
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def test_visible_shows_control_characters_and_bytes_that_are_not_utf8_as_escapes():
    assert visible(HOSTILE) == "<s>\\x1b[31m\\xff\\n\\xfe"
    assert visible("a\tb\rc\x00d\x7f") == "a\\tb\\rc\\x00d\\x7f"
    # C1 controls, bidirectional overrides, separators: as \uNNNN, never as the byte form
    assert visible("\u009b2J \u202eevil \u2028 \ufffe") == "\\u009b2J \\u202eevil \\u2028 \\ufffe"


def test_visible_keeps_printable_text_as_it_is_and_is_idempotent():
    for text in ("python3", "/tmp/dir with spaces/é ü 日本 💀", "by\\x2duuid.mount", ""):
        assert visible(text) == text
    assert visible(visible(HOSTILE)) == visible(HOSTILE)


def test_everything_visible_leaves_is_printable_and_allowed_by_xml():
    every = "".join(chr(point) for point in range(0x110000))
    shown = visible(every)
    assert all(XML_CHAR.fullmatch(char) for char in shown)
    assert "\n" not in shown and "\t" not in shown and "\x1b" not in shown
    shown.encode("utf-8")  # no surrogate is left


def test_visible_all_reaches_every_string_of_a_document():
    document = {"comm": HOSTILE, "reasons": [{"message": "fd 3: " + HOSTILE, "fd": 3}],
                HOSTILE: None, "tree": True}
    shown = visible_all(document)
    assert shown["comm"] == visible(HOSTILE)
    assert shown["reasons"] == [{"message": "fd 3: " + visible(HOSTILE), "fd": 3}]
    assert visible(HOSTILE) in shown and shown["tree"] is True


def test_json_is_ascii_valid_and_shows_bytes_that_are_not_utf8_as_text():
    encoded = json_bytes({"comm": HOSTILE})
    encoded.decode("ascii")
    assert json.loads(encoded) == {"comm": "<s>\x1b[31m\\xff\n\\xfe"}
    assert json.loads(encoded)["comm"] == unicode_text(HOSTILE)


def test_json_is_what_json_dumps_writes_for_valid_unicode():
    chosen = random.Random(12)
    alphabet = "aZ09 \"\\/\n\t\x00\x1b\x7f\u009b é日\u2028\ufffe💀\U0010ffff"
    for _ in range(500):
        value = {"".join(chosen.choices(alphabet, k=3)): ["".join(chosen.choices(alphabet, k=12)),
                                                          chosen.random(), None, True]}
        assert json_text(value) == json.dumps(value)
        assert json_text(value, indent=2) == json.dumps(value, indent=2)


def test_indented_json_is_what_json_dumps_writes_for_documents_of_every_shape():
    chosen = random.Random(14)
    scalars = ["", "fd 3: pipe:[12]", "é日\u2028💀", 0, -7, 2**70, 0.5, 1e300, True, False, None]

    def value(depth: int):
        shape = chosen.randrange(6 if depth < 4 else 1)
        if shape == 0:
            return chosen.choice(scalars)
        if shape in (1, 2):
            return {chosen.choice("abcdef") * chosen.randint(1, 3): value(depth + 1)
                    for _ in range(chosen.randrange(4))}
        if shape == 3:
            return [chosen.choice(scalars) for _ in range(chosen.randrange(4))]
        return [value(depth + 1) for _ in range(chosen.randrange(4))]

    for _ in range(500):
        document = value(0)
        for indent in (2, 4):
            assert json_text(document, indent=indent) == json.dumps(document, indent=indent)
    # a key that is not a string and a tuple: what json.dumps makes of them
    odd = {"reasons": [{1: "one", None: (2, 3)}], "pair": ("a", {"b": ()})}
    assert json_text(odd, indent=2) == json.dumps(odd, indent=2)


def test_json_escapes_only_real_surrogates_not_text_that_looks_like_them():
    # a backslash followed by "udcff" is text, and the low half of a pair is no lone byte
    value = ["\\udcff", "\U0001f480", "\\\udcff", "\ud800"]
    assert json.loads(json_text(value)) == ["\\udcff", "\U0001f480", "\\\\xff", "\\ud800"]


def test_sqlite_keeps_a_name_without_loss_whatever_its_bytes():
    chosen = random.Random(7)
    names = [HOSTILE, "plain", "", "é"] + [
        bytes(chosen.randrange(256) for _ in range(15)).decode("utf-8", "surrogateescape")
        for _ in range(200)]
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, comm TEXT NOT NULL)")
        connection.executemany("INSERT INTO t (comm) VALUES (?)",
                               [(to_column(name),) for name in names])
        stored = [from_column(row[0]) for row in
                  connection.execute("SELECT comm FROM t ORDER BY id")]
    assert stored == names
    assert isinstance(to_column("plain"), str) and isinstance(to_column(HOSTILE), bytes)
    assert to_column("lone \ud800") == "lone \\ud800"  # no byte made it: kept as its text


def test_an_xml_document_of_visible_text_parses():
    suite = ET.Element("testsuite", name=visible(HOSTILE))
    ET.SubElement(suite, "testcase", name=visible("".join(map(chr, range(0x20)))))
    parsed = ET.fromstring(ET.tostring(suite, encoding="utf-8", xml_declaration=True))
    assert parsed.get("name") == "<s>\\x1b[31m\\xff\\n\\xfe"
