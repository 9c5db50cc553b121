"""The ``nicemu`` command line: bench, schedule and info, on top of the four packages."""
