"""Built-in plugin: resolve a tag to its digest by asking the registry (`--registry-resolve`)."""
