"""tote: rescue pods stuck in ImagePullBackOff from another node's containerd cache."""

from importlib.metadata import PackageNotFoundError, version

# One version source: pyproject.toml's `version`, read back from the installed package's
# metadata (`tools/release.py bump` edits it together with the chart and the CHANGELOG).
# The distribution is `tote-salvage` (PyPI's `tote` is another project); the command and the
# import names are `tote`, `tote_core` and the plugin packages.
DISTRIBUTION = "tote-salvage"
try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
