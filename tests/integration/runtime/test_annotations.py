"""Downward API annotations file: the operator's target version."""

from deeprec_runtime.model.annotations import parse_annotations, read_target_version


def test_kubelet_format_is_parsed_with_go_quoting():
    text = ('kubectl.kubernetes.io/last-applied-configuration="{\\"a\\":\\"b\\\\n\\"}"\n'
            'serving.deeprec.io/target-version="checkpoint_2"\n'
            'empty=""\n')
    parsed = parse_annotations(text)
    assert parsed["serving.deeprec.io/target-version"] == "checkpoint_2"
    assert parsed["kubectl.kubernetes.io/last-applied-configuration"] == '{"a":"b\\n"}'
    assert parsed["empty"] == ""


def test_missing_file_or_annotation_means_latest(tmp_path):
    assert read_target_version(str(tmp_path / "nope")) == "latest"
    assert read_target_version(None) == "latest"
    path = tmp_path / "annotations"
    path.write_text('other="x"\n')
    assert read_target_version(str(path)) == "latest"
    path.write_text('serving.deeprec.io/target-version="  "\n')
    assert read_target_version(str(path)) == "latest"
    path.write_text('serving.deeprec.io/target-version="checkpoint_1"\n')
    assert read_target_version(str(path)) == "checkpoint_1"
