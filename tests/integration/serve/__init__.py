"""One ``serve`` process's life: start-up checks, shutdown under load, restarts and fail-over,
admission, and the admin address's guards."""
