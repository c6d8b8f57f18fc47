"""The allowed values of config fields, written once.

Validation (config/validation.py) checks a config against these, and the code
that acts on a field imports the same tuple, so the two cannot drift apart.
A value added here must be handled by its owner (named beside each entry).
"""

# config.mixture (train/mixture.py): 'sample' one dataset per step by weight, 'all' every dataset.
MIXTURES = ("sample", "all")
# config.optimizer.name (train/optim.py).
OPTIMIZERS = ("adamw", "sgd")
# config.nonfinite.policy (train/nonfinite.py).
NONFINITE_POLICIES = ("stop", "skip")
# config.model.attention_type (models/timesformer.py).
ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
# config.model.attention_impl (models/timesformer.py): 'xla' explicit einsums + softmax (any
# device, attention dropout, bit-for-bit the reference math); 'cudnn' cuDNN's fused flash
# attention (GPU, bf16/fp16, no attention dropout); 'auto' cudnn where it can run, else xla.
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# config.model.remat (models/block_stack.py): what a block keeps for the backward pass.
REMAT = ("none", "full", "dots")
# config.model.dtype: the compute dtype (parameters stay float32).
DTYPES = ("float32", "bfloat16", "float16")
# config.datasets.<name>.sampling (input/pipeline.py, evaluation/views.py).
SAMPLINGS = ("stride", "segment")
# config.datasets.<name>.eval_crops (evaluation/views.py): 1 centre, 3 along the long side.
EVAL_CROPS = (1, 3)
# config.datasets.<name>.augment.kind (input/augment.py).
AUGMENT_KINDS = ("crop", "scale_jitter", "random_resized_crop", "inception")
# config.datasets.<name>.augment.randaugment_magnitude: the RandAugment paper's 0..10 scale.
RANDAUGMENT_MAX_MAGNITUDE = 10.0
# config.init.format (pretrained/loader.py), besides 'auto'.
INIT_FORMATS = ("vit_npz", "big_vision_npz", "timesformer_pyth", "hf", "orbax")
# config.init.heads (pretrained/fit.py).
INIT_HEAD_MODES = ("matching", "none", "all")
# config.init.posemb_resize (pretrained/resize.py), besides 'auto'.
POSEMB_RESIZE = ("nearest", "bilinear")
