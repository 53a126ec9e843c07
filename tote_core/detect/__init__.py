"""Pure, synchronous detection: pod status → failures; image references; node inventory."""
