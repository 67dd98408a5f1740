"""Pure decision logic of the lib installer: names, versions, ELF checks, install and GC plans.

Nothing in this package touches the filesystem or the clock; the adapters gather facts and
the app layer feeds them in, so every rule can be tested with plain values.
"""
