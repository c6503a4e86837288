"""tuneloop training: adapter registry (versions and the CURRENT pointer), training rounds."""
