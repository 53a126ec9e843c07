"""Plugin hooks: the specs (`hookspecs`) and the host that loads and calls plugins (`host`)."""
