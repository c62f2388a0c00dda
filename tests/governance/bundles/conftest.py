"""The compiler's and the sidecar pages' tests: what tests/stack.py gives every bundle test.

A known signing key, a flushed Redis, content types forgotten after a transactional
flush (the three autouse fixtures). The flush is why this folder is serial
(``SERIAL_DIRS`` in tests/conftest.py).
"""

from tests.stack import (  # noqa: F401 - autouse fixtures, re-exported for pytest
    _clean_redis,
    _fresh_content_types,
    _signing_key,
)
