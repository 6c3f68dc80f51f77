"""One module per pipeline stage: a pure core function plus the file I/O around it (`run`)."""
