"""The command line: the `diffinject` console script, the argument parser and the options the
experiment drivers share, and preflight checks of paths. The top layer; nothing imports it
(nor experiments/ or bench/)."""
