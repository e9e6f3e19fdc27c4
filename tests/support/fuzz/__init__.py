"""What the fuzz targets of tests/fuzz import: the seed model they run against (seed_model.py) and
requests built field by field with absurd shapes (shapes.py; needs atheris)."""
