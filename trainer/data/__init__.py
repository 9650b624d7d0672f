"""From dataset versions to torch datasets and resumable loaders."""
