"""Work-arounds for third-party packages, each in a module of its own."""
