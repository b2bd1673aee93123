"""The operator's decisions, as pure functions of what was observed: no I/O, no clock, no randomness
unless passed in. Each one has a table-driven unit test (tests/unit/test_decide_*.py).

- `environment`: an Environment's outcome (status, conditions, whether to create its build), and
  adoption of an existing EnvironmentBuild;
- `build`: an EnvironmentBuild's next step (queue, start, wait, verify, retry with backoff, give up);
- `admission`: what a new pod gets (image or scheduling gate, variables) and gate release;
- `curated`: reserved (curated) environment names;
- `retry`: which API errors to retry, and how long to wait (capped, jittered, Retry-After).
"""
