"""Sweeps over cells: the ablation settings and their Ray Tune driver. Imports experiment/ and below."""
