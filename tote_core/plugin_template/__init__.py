"""`tote plugin init NAME`: a new plugin package whose own tests pass out of the box (a
typed settings Struct, a `notify` hook, tests on tote's pytest plugin)."""
