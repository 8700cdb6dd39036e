"""Rule files: YAML source, schema, canonical form, validation."""
