"""The classifier training loop (fit, evaluate, the selections) and its context: readable in one
sitting; the method being trained is an argument. Imports core/, data/, nets/, config/."""
