"""Built-in plugin `webhook`: notifications delivered to a webhook (JSON or Slack)."""
