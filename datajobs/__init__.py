"""Data acquisition jobs: fetch real archive data, validate it, publish versioned datasets (torch-free)."""
