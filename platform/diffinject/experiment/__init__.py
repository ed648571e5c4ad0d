"""Experiment bookkeeping: the artifact cache and its keys, a table cell (stages 1 to 4 of one
method, dataset, ratio and seed), the stage runs behind it, cells in parallel over Ray, progress
lines, the checkpoints the project ships, and the length studies (learning curves, checkpoint
quality). Imports every layer below it."""
