"""The node agent, a program of its own: `tote agent` reaches `__main__.main`
through the entry-point group `tote.commands`; `daemon.run` is the daemon. The controller
side of the containerd plugin uses `client`, `api`, `errors` and `tls` from here.
"""
