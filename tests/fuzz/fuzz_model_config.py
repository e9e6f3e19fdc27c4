"""Fuzz target: bytes -> model_config JSON file -> ModelConfig. Only ConfigError may escape.

Run: python tests/fuzz/fuzz_model_config.py WORKDIR [libFuzzer flags] [corpus dirs]
"""

import os
import sys

import atheris

with atheris.instrument_imports(include=["deeprec_runtime"]):
    from deeprec_runtime.config import load_model_config
    from deeprec_runtime.errors import ConfigError


def main() -> None:
    workdir = sys.argv.pop(1)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "model_config.json")

    def one_input(data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            load_model_config(path, env={})
        except ConfigError as exc:
            assert exc.field and str(exc)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
