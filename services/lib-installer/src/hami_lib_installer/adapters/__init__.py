"""I/O of the lib installer: the source directory, the destination filesystem, /proc, the test hook."""
