"""Base configuration: every experiment config derives from this one.

Configs are Python (big_vision / flax-examples style): `get_config(arg)` returns a locked
`ml_collections.ConfigDict`, so a mistyped key on the command line or in a derived config is an
error that names the key, never a silently ignored setting. Any field can be overridden with
`--config.<path>=<value>`, e.g. `--config.optimizer.learning_rate=0.01`.
"""

import ml_collections
from ml_collections import config_dict

from configs import models


def get_config(arg=None):
    """Returns the base config. `arg` (the text after ':' in --config) is unused here."""
    del arg
    config = ml_collections.ConfigDict()
    config.seed = 0

    # --- Data --------------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    config.data.name = "shapes"
    # Where tensorflow-datasets keeps prepared data; None means tfds' default (~/tensorflow_datasets).
    config.data.data_dir = config_dict.placeholder(str)
    # The folder of a user's own dataset (name 'folder': images/, masks/, classes.json, splits/).
    config.data.root = ""
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    # The dataset says how many classes it has and which label is void: None takes its values
    # (the built-in and tfds datasets write 255 for void; a folder's classes.json may say another).
    # A value given here must agree with the dataset's, which is checked before training.
    config.data.num_classes = config_dict.placeholder(int)
    config.data.ignore_label = config_dict.placeholder(int)
    # Training augmentation (DeepLab recipe): random scale, pad with ignore_label, random crop, flip.
    config.data.crop_size = 128
    config.data.min_scale = 0.5
    config.data.max_scale = 2.0
    config.data.hflip = True
    # Per-channel normalisation applied to images in [0, 1] (ImageNet statistics by default).
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)
    # Photometric jitter of the training crops (seg_jax.data.augment), in a random order; 0 turns
    # a term off. Brightness, contrast and saturation scale by a factor drawn from [1 - s, 1 + s]
    # (s in [0, 1]); hue rotates the chroma by up to s / 2 of a turn (s in [0, 0.5]). Off by
    # default: on `shapes` colour tells the class.
    config.data.jitter = ml_collections.ConfigDict(
        dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0))
    # Rare-class sampling (DAFormer, Hoyer et al. 2022): each training example is drawn by first
    # drawing a class c with probability softmax((1 - f_c) / temperature) over the training split's
    # pixel frequencies f_c, then an image with at least min_pixels pixels of c. 0 turns it off
    # (the shuffled epochs); DAFormer uses 0.01. Still a pure function of (seed, step).
    config.data.rare_class_sampling = ml_collections.ConfigDict(
        dict(temperature=0.0, min_pixels=1))
    # Host-side input threads (0: one per CPU core this process may use), and how many batches
    # to prepare ahead of the device (at least one per thread, so that every thread has work).
    config.data.num_workers = 0
    config.data.prefetch = 2

    # --- Model -------------------------------------------------------------------------------
    # Every field of the model, with its default, from configs/models.py (the one home of model
    # defaults); the class count is the dataset's.
    config.model = models.deeplabv3(num_classes=config.data.get_ref("num_classes"))

    # --- Loss --------------------------------------------------------------------------------
    # `name` is one loss or a sum, e.g. 'cross_entropy+dice'; `term_weights` has one float per term
    # (() = all 1). Each loss's options live in its own sub-dict; () means the function's default.
    config.loss = ml_collections.ConfigDict()
    config.loss.name = "cross_entropy"
    config.loss.ignore_label = config.data.get_ref("ignore_label")
    config.loss.term_weights = ()
    # Weight of the auxiliary head's loss (the same loss on its logits) when model.aux_head is on;
    # torchvision's segmentation recipe uses 0.5.
    config.loss.aux_weight = 0.5
    # class_weights (here and in the region losses): () for none, a tuple of C floats, or a scheme
    # computed from the training split's label histogram, 'median_frequency' (Eigen & Fergus) or
    # 'inverse_sqrt_frequency' (the class pixel counts are cached in the workdir as
    # class_counts.npz). top_k_percent < 1: each image's hardest pixels only (deeplab2's hard-pixel
    # mining). ohem_threshold > 0: mmsegmentation's OHEM rule, the pixels whose true-class
    # probability is below the threshold, and at least the ohem_min_kept * N least confident
    # pixels of the batch of N images.
    config.loss.cross_entropy = ml_collections.ConfigDict(dict(
        label_smoothing=0.0,
        class_weights=config_dict.FieldReference((), field_type=object),
        top_k_percent=1.0, ohem_threshold=0.0, ohem_min_kept=100000,
    ))
    config.loss.focal = ml_collections.ConfigDict(dict(gamma=2.0, alpha=()))

    def region(**more):  # each loss its own class_weights field (a tuple or a scheme name)
        return ml_collections.ConfigDict(dict(
            smooth=1e-5, per_image=True, include_background=True,
            class_weights=config_dict.FieldReference((), field_type=object), **more))

    config.loss.dice = region()
    config.loss.jaccard = region()
    config.loss.tversky = region(alpha=0.5, beta=0.5, gamma=1.0)
    config.loss.lovasz = ml_collections.ConfigDict(dict(classes="present", per_image=False))
    # cost[c][c_true], as for config.decision.cost; must be set to use 'expected_cost'.
    config.loss.expected_cost = ml_collections.ConfigDict(dict(cost=()))
    # A loss registered outside the package (seg_jax.losses.register_loss) keeps its options in
    # config.loss.<its name>: add them with `add_loss_options(config, name, **defaults)`.

    # --- Decision at every pixel (evaluation and predictions) ---------------------------------
    config.decision = ml_collections.ConfigDict()
    # 'map': argmax. 'bayes': argmin over c of sum_c' cost[c, c'] p_c' (expected cost).
    config.decision.rule = "map"
    # cost[c][c_true]: the cost of predicting c when the truth is c_true, one row per predicted
    # class; None means the 0-1 cost 1 - eye(C). Evaluation reports the realised mean cost under
    # it beside mIoU (for the 0-1 cost, the pixel error rate).
    config.decision.cost = config_dict.placeholder(tuple)

    # Temperature scaling (Guo et al. 2017) fitted at evaluation on the logits of every k-th pixel
    # (rows and columns) of the eval split; 0 turns it off. The fit and the ECE after scaling are
    # measured on the same pixels, so they are in-sample figures.
    config.decision.temperature_stride = 0

    # --- Optimisation ------------------------------------------------------------------------
    config.batch_size = 16  # global, over all devices and hosts
    config.num_train_steps = 1000
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # 'sgd' (momentum) or 'adamw'
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    # 'poly' (DeepLab: lr * (1 - t/T)^power), 'cosine' or 'constant', after a linear warmup.
    config.optimizer.schedule = "poly"
    config.optimizer.poly_power = 0.9
    config.optimizer.warmup_steps = 0
    config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping
    # Gradient accumulation: each update averages the gradients of this many micro-batches of
    # batch_size / accumulate_steps, run one after another (activation memory of one micro-batch).
    # Steps, the schedule, logs and checkpoints count updates. BatchNorm normalises each
    # micro-batch by its own statistics.
    config.optimizer.accumulate_steps = 1
    # An exponential moving average of the weights (params and BatchNorm statistics) kept beside
    # them: ema <- decay * ema + (1 - decay) * weights after every update; 0 turns it off.
    # Evaluation then reports both (mean_iou and ema/mean_iou).
    config.ema_decay = 0.0
    # A non-finite loss or gradient: 'stop' ends the run naming the step (the last good checkpoint
    # is kept); 'skip' leaves such updates out and counts them (logged as skipped_steps), and
    # stops only after this many in a row.
    config.nan_policy = "stop"
    config.nan_max_consecutive_skips = 10

    # --- Panoptic models (Panoptic-DeepLab; ignored by semantic models) ------------------------
    config.panoptic = ml_collections.ConfigDict()
    config.panoptic.max_instances = 32  # thing segments per image (and their largest id)
    config.panoptic.center_sigma = 8.0  # pixels, of the centre Gaussians (paper: 8)
    config.panoptic.center_loss_weight = 200.0  # paper: 200 (MSE) ...
    config.panoptic.offset_loss_weight = 0.01  # ... and 0.01 (L1)
    config.panoptic.center_threshold = 0.1  # keypoints: heatmap above this,
    config.panoptic.nms_kernel = 7  # local maxima in this window,
    config.panoptic.top_k = 32  # at most this many (paper: 200 on Cityscapes)
    config.panoptic.max_segments = 64  # PQ's bound on segments per image
    config.panoptic.preset = "coco"  # PQ conventions (seg_jax.metrics.panoptic)

    # --- Evaluation, logging, checkpoints ------------------------------------------------------
    # How whole images are predicted (evaluation and --mode=predict); seg_jax.inference.
    config.evaluation = ml_collections.ConfigDict()
    # 'whole': the full image in one pass; 'sliding': overlapping windows, logits averaged.
    config.evaluation.mode = "whole"
    # Each image is padded (image: the mean colour, labels: ignore_label) to a multiple of this,
    # or to pad_size (H, W) if given, and predictions are cropped back; images of one padded size
    # are batched together, and each padded size compiles once.
    config.evaluation.pad_multiple = 32
    config.evaluation.pad_size = ()
    # Sliding windows: (H, W), () = (crop_size, crop_size); neighbouring windows overlap by this
    # fraction of a window (1/3: mmsegmentation's 512 px windows at stride 341).
    config.evaluation.window = ()
    config.evaluation.window_overlap = 1.0 / 3.0
    # Test-time augmentation: softmax probabilities averaged over these input scales, and over
    # left-right flips when flip=True.
    config.evaluation.scales = (1.0,)
    config.evaluation.flip = False
    # Metrics registered with seg_jax.metrics.register_metric / register_batch_metric, by name;
    # each is reported in results.json and metrics.jsonl beside the built-in ones.
    config.evaluation.metrics = ()
    config.eval_batch_size = 16
    config.eval_every_steps = 500  # 0: evaluate only at the end
    # Boundary F-score (Csurka et al. 2013) at evaluation: boundary pixels match within this many
    # pixels (Euclidean); seg_jax.metrics.boundary for the conventions.
    config.eval_boundary_f_score = True
    config.eval_boundary_tolerance = 2.0
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    # Train steps dispatched ahead of the host before it waits for the oldest: 2 keeps the
    # accelerator busy while the host prepares the next step, and bounds both the batches held
    # in device memory and the time from a preemption notice (SIGTERM) to its checkpoint.
    config.steps_in_flight = 2
    config.num_prediction_images = 8  # rows of predictions.png
    # The runner (seg_jax.main) sets an XLA flag that speeds up convolutions on CPU (README: speed);
    # it must be set before JAX starts, so in a notebook set XLA_FLAGS yourself.
    config.xla_cpu_fast_conv = True
    # JAX's persistent compilation cache: a repeated or resumed run (and every point of a sweep)
    # loads its compiled programs instead of compiling them again. '' turns it off; the
    # JAX_COMPILATION_CACHE_DIR environment variable, when set, takes precedence.
    config.compilation_cache_dir = "~/.cache/seg_jax/jax_compilation_cache"
    # Modules imported before a run reads loss or metric names: where losses and metrics defined
    # outside seg_jax register themselves. Dotted names ('my_project.losses') or .py paths.
    config.extra_modules = ()

    config.lock()
    return config


def add_loss_options(config, name: str, **options):
    """Adds `config.loss.<name>` holding `options` (their defaults) for a loss registered outside
    the package, so that `--config.loss.<name>.<option>=...` and sweeps can set them; returns
    `config`. The loss itself is chosen with `config.loss.name`."""
    with config.unlocked():
        config.loss[name] = ml_collections.ConfigDict(options)
    return config


def shrink_for_smoke_test(config):
    """The `quick` variants of the real-dataset configs: the config's model and schedule shrunk to
    a ResNet-18 of width 8 on 64 px crops, batch 8 (divisible by 1, 2, 4 or 8 devices), two steps
    with a checkpoint and an evaluation at the end. Model-specific head widths stay with the
    caller. Returns `config`."""
    config.model.backbone = "resnet18"
    config.model.base_width = 8
    if "aspp_channels" in config.model:  # models without ASPP (dilated_context) have none
        config.model.aspp_channels = 16
    config.data.crop_size = 64
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 2
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    config.num_prediction_images = 2
    return config
