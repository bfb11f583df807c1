"""Top-level pytest configuration: shared fixtures live in tests/fixtures/ (one module per area)."""

pytest_plugins = [
    "tests.fixtures.phantoms",
    "tests.fixtures.database",
    "tests.fixtures.celery",
    "tests.fixtures.label_studio",
]
