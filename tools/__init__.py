"""Release tooling (version bump, artefact build and checks); see docs/releasing.md."""
