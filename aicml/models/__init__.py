"""Model training engine: feature preparation, Lightning modules, scikit-learn baselines, one trainer protocol.

torch and lightning are imported only by the modules in this package that need them.
"""
