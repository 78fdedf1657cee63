"""The method registry: every method the trainer can run, by config name (`method.name`)."""

METHODS: dict[str, type] = {}
