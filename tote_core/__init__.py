"""tote: rescue pods stuck in ImagePullBackOff from another node's containerd cache."""

__version__ = "0.1.0"
