"""tote-acme: a test plugin that logs each notification together with its own settings."""
