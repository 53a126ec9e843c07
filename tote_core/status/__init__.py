"""The status board and what feeds it; the WebSocket server is in components/statusfeed."""
