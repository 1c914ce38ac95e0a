"""tunekit.convert."""
