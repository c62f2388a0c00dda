"""The compatibility suite (``make compat``): docs/compatibility.md."""
