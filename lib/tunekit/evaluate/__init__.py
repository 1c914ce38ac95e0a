"""tunekit.evaluate."""
