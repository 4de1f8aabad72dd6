"""Experiment drivers, configurations and demo corpora for shadowmia."""
