"""tunekit.model."""
