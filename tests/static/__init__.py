"""Checks that read the source tree rather than run the product: lint, types, import contracts,
bandit, generated code, the chart, the CRD, the Dockerfiles and the images' install sets."""
