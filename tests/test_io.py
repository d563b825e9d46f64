"""The append-only log's repair on open: a torn trailing line is cut, whatever its length, and reading
only the tail keeps a log reopened per chunk from being read whole each time."""

from __future__ import annotations

from treesynth.io import JsonlAppender, encode_line, read_jsonl


def test_a_torn_trailing_line_is_cut_off_at_open(tmp_path):
    path = tmp_path / "log.jsonl"
    cases = {
        "short tear": b'{"a": 1}\n{"a": 2}\n{"a": ',
        "tear longer than the read block": b'{"a": 1}\n' + b'{"a": "' + b"x" * 200_000,
        "only a torn line": b'{"a": "' + b"y" * 70_000,
        "whole": b'{"a": 1}\n',
        "empty": b"",
    }
    for name, content in cases.items():
        path.write_bytes(content)
        with JsonlAppender(path) as log:
            log.append({"a": 9})
        rows = read_jsonl(path)
        kept = content[: content.rfind(b"\n") + 1]
        assert path.read_bytes() == kept + encode_line({"a": 9}), name
        assert rows[-1] == {"a": 9} and len(rows) == kept.count(b"\n") + 1, name
