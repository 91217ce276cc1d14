"""The lab layer: what notebooks, sweeps, reports and explorers use on top of the core.

Lab modules may import the core (`interlab.config`, `interlab.train`, `interlab.methods`, ...);
no core module imports lab (`tests/test_layers.py` checks it).
"""
