"""tunekit.train."""
