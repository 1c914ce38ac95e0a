"""tunekit.jobs."""
