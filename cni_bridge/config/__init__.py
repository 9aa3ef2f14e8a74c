"""Network configuration: schema validation, semantic checks and the typed model."""
