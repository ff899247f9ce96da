"""Run directories on disk: the writer the loop uses and the reader ``compare``/``eval`` use."""
