"""Built-in plugin `source-policy`: which node a salvage copies from."""
