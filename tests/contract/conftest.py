"""The contract suites are generated from the registries; a test-only member joins them by being imported."""

import toy_compressor  # noqa: F401  (registers the "toy" compressor)
