"""custom_op_paths: libraries are loaded with tf.load_op_library before any model loads."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from deeprec_runtime.config import parse_model_config
from deeprec_runtime.errors import ConfigError
from tests.support.runtime import output

# A library whose loader constructor leaves a mark: proves TensorFlow really loaded it, in this
# process, before the model was served.
MARKER_SOURCE = r"""
#include <stdlib.h>
#include <stdio.h>
__attribute__((constructor)) static void mark(void) {
    const char* path = getenv("CUSTOM_OP_MARKER");
    FILE* f = path ? fopen(path, "w") : NULL;
    if (f) { fputs("loaded", f); fclose(f); }
}
"""


@pytest.fixture
def op_library(tmp_path, monkeypatch):
    gcc = shutil.which("gcc")
    assert gcc, "gcc is required to build the test's op library"
    (tmp_path / "op.c").write_text(MARKER_SOURCE)
    so = tmp_path / "libmarker_op.so"
    subprocess.run([gcc, "-shared", "-fPIC", str(tmp_path / "op.c"), "-o", str(so)], check=True)
    marker = tmp_path / "marker"
    monkeypatch.setenv("CUSTOM_OP_MARKER", str(marker))
    return str(so), marker


def test_custom_op_library_is_loaded_before_the_model_serves(seed_model, serve, op_library):
    _, _, base = seed_model
    so, marker = op_library
    _, client = serve(str(base / "saved_model"), str(base / "checkpoints"),
                            custom_op_paths=[so])
    assert marker.read_text() == "loaded"
    response = client.predict({"input1": np.array([0.5]), "input2": np.array([3], np.int32)})
    assert output(response, "probabilities").shape == (1,)


def test_unloadable_custom_op_path_is_a_config_error_naming_the_field(seed_model, serve, tmp_path):
    _, _, base = seed_model
    not_elf = tmp_path / "not_a_library.so"
    not_elf.write_text("plain text")
    for path in (str(tmp_path / "missing.so"), str(not_elf)):
        with pytest.raises(ConfigError) as err:
            serve(str(base / "saved_model"), str(base / "checkpoints"), custom_op_paths=[path])
        assert err.value.field == "custom_op_paths" and path in str(err.value)


@pytest.mark.parametrize("value", ["/one/path.so", [""], [3], {"a": 1}])
def test_custom_op_paths_must_be_a_list_of_paths(value):
    with pytest.raises(ConfigError) as err:
        parse_model_config({"savedmodel_dir": "/m", "custom_op_paths": value})
    assert err.value.field == "custom_op_paths"
