"""Test doubles, importable by tests and benches; not backends for real runs (`llm=scripted` exists so that
tests and benches can run the pipeline without a model; `python run.py --help` labels it a test double).

- `scripted`: the in-process deterministic backend (`llm=scripted`, whose YAML names it `llm.backend=treesynth.testing.scripted:ScriptedBackend`): schema-valid instances drawn
  from a RNG seeded by the request, or scripted answers.
- `stub_server`: a loopback OpenAI-compatible server (latency, slots, seeded faults), with the Batch API
  of `stub_batches` (`/v1/files`, `/v1/batches`: delay, expiry, error-file lines).
- `capable`: an OpenAI-compatible loopback server that answers like a capable model (the `open` profile's
  double: long Unicode/LaTeX problems, code, valid criterion and coverage answers, full solutions).
"""
