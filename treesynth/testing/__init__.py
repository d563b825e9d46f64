"""Test doubles, importable by tests and benches; not user-selectable backends.

- `capable`: an OpenAI-compatible loopback server that answers like a capable model (the `open` profile's
  double: long Unicode/LaTeX problems, code, valid criterion and coverage answers, full solutions).
"""
