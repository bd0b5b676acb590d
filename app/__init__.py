"""The application layer, outermost: the `backbone` command, the demo, the local pipeline and the
operator's status view. It may import every other package; nothing in backbone/, producers/,
processors/ or consumers/ imports it (tests and benchmarks do, as harnesses)."""
