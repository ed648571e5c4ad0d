"""Reading finished runs back: one reader of finished cell runs, one paired difference, the
results table, the comparison of experiments and Table 1 with its figures. Imports tracking/,
config/, data/, core/ and the pure quality metrics of stages/; loads no torch."""
