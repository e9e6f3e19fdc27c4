"""deeprec_operator: reconciles DeepRecModel resources into runtime pods and steers their versions.

Imported as `deeprec_operator`; the folder is `operator/` but a package importable as `operator`
would shadow Python's standard library module.
"""

__version__ = "0.1.0"
