"""Built-in plugin `notify`: webhook and Slack notifications."""
