"""Tests that need a CUDA GPU (marker ``gpu``); each skips itself, saying so, where there is none."""
