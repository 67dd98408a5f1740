"""Pure decision logic of the lib installer: names, versions, ELF checks, install and GC plans; nothing here
touches the filesystem or the clock, so every rule can be tested with plain values."""
