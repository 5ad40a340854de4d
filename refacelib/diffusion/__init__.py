"""The cascaded diffusion model: configuration, networks, conditioning, training and sampling.

Imports neither :mod:`refacelib.data` nor :mod:`refacelib.deface`: arrays in, arrays out.
"""
from refacelib.diffusion import cascade
from refacelib.diffusion.cascade import (
    StageConfig,
    CascadeConfig,
    face_box,
    box_slices,
    pad_to_multiple,
    unpad,
    downsample,
    downsample_mask,
    upsample,
    make_unet,
    make_scheduler,
    as_volume_tensor,
    stage1_inputs,
    stage2_inputs,
    stage1_to_full,
    conditioning,
    predict_x0,
    noise_in_mask,
)
from refacelib.diffusion import train
from refacelib.diffusion.train import (
    train_stage,
    load_stage,
    validation_trend,
    prepare_stage_data,
    CHECKPOINT_VERSION,
    main,
)
from refacelib.diffusion import sample
from refacelib.diffusion.sample import (
    reface,
    one_step_estimate,
    make_sampler,
    auto_batch_size,
    batch_from_memory,
)

__all__ = [
    "cascade",
    "StageConfig",
    "CascadeConfig",
    "face_box",
    "box_slices",
    "pad_to_multiple",
    "unpad",
    "downsample",
    "downsample_mask",
    "upsample",
    "make_unet",
    "make_scheduler",
    "as_volume_tensor",
    "stage1_inputs",
    "stage2_inputs",
    "stage1_to_full",
    "conditioning",
    "predict_x0",
    "noise_in_mask",
    "train",
    "train_stage",
    "load_stage",
    "validation_trend",
    "prepare_stage_data",
    "CHECKPOINT_VERSION",
    "main",
    "sample",
    "reface",
    "one_step_estimate",
    "make_sampler",
    "auto_batch_size",
    "batch_from_memory",
]
