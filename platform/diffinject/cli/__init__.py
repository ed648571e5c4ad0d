"""The command line: the `diffinject` console script (main, data_commands), the argument parser
that answers a bad command line in one line, and the run guards the experiment scripts share.
The top layer: nothing in the package imports it (nor experiments/ or bench/)."""
