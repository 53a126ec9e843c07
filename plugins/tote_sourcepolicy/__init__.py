"""Built-in plugin `source-policy`: which node a salvage copies from (SPEC §3 step 2)."""
