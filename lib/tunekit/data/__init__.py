"""tunekit.data."""
