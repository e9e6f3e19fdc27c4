"""The model the fuzz targets run against: DeepRec's seed example (double + int32 inputs)."""

import os


def export_seed_model(workdir: str) -> str:
    """Exports the seed example's SavedModel under `workdir` once; returns its folder."""
    from deeprec_runtime.training import CheckpointWriter, build_seed_example

    model_dir = os.path.join(workdir, "saved_model")
    if not os.path.exists(model_dir):
        model = build_seed_example(num_ids=20)
        writer = CheckpointWriter(model.session, os.path.join(workdir, "ckpt"), "checkpoint_1",
                                  model.embedding_variables, model.dense_variables)
        writer.export_saved_model(model_dir, model.inputs, model.outputs)
        model.close()
    return model_dir
