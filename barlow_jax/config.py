"""The configuration schema: every knob of a run, with the reference's values as defaults.

Experiment files in `configs/` start from `base_config()` and change what differs, so a key that
is misspelt in an experiment file or on the command line (`--config.optim.lr_weight=...`) fails
instead of being silently ignored (`lock_config=True` in `main.py`).

Defaults are the reference code's released values for ImageNet, ResNet-50 and global batch 2048
(docs/reference.md §3, §4).
"""

import ml_collections

# evaluation.voc07.VOC07_COSTS (tests/test_config_validation.py checks they agree; this module
# imports nothing of the project): Goyal et al.'s cost list plus the 0.5**4 ... 0.5**19 their
# svm_helper.py appends.
_VOC07_COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(
  0.5**k for k in range(4, 20)
)


def view_config(*, blur_prob: float, solarize_prob: float) -> ml_collections.ConfigDict:
  """Augmentation settings of one view (docs/reference.md §4, BYOL parameters)."""
  view = ml_collections.ConfigDict()
  view.crop_area = (0.08, 1.0)  # Random resized crop: fraction of the image area.
  view.crop_aspect = (3 / 4, 4 / 3)
  view.crop_method = "bicubic"
  view.flip_prob = 0.5
  view.jitter_prob = 0.8  # Colour jitter, its four ops applied in random order.
  view.brightness = 0.4
  view.contrast = 0.4
  view.saturation = 0.2
  view.hue = 0.1  # Max hue shift as a fraction of a full turn (0.5 = any hue).
  view.grayscale_prob = 0.2
  view.blur_prob = blur_prob
  view.blur_sigma = (0.1, 2.0)
  view.solarize_prob = solarize_prob
  view.solarize_threshold = 0.5  # On [0, 1] pixels: 128/255 rounds to this.
  view.channel_permute_prob = 0.0  # Extra op (cluttered digits): random RGB channel order.
  view.noise_std = 0.0  # Extra op: additive Gaussian pixel noise, on [0, 1] pixels.
  return view


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, set to the reference's ImageNet values."""
  # Long because it lists every key, one line each: read top-down, it is the config reference.
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  # "cluttered_digits", "digits", "folder", or any TFDS image dataset name ("imagenet2012", ...).
  config.dataset.name = "imagenet2012"
  config.dataset.data_dir = ""  # TFDS data_dir; "" means the TFDS default.
  config.dataset.folder = ""  # Root of an image folder when name == "folder".
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"  # Labelled split for evaluation ("" = none).
  config.dataset.probe_split = "train"  # Labelled split the evaluations train on ("" = none).
  config.dataset.image_key = "image"
  config.dataset.label_key = "label"
  # TFDS sources: keep only these classes, relabelled 0..K-1 ("" = all): a packaged list
  # ("imagenet100": solo-learn's ImageNet-100) or a text file of class names.
  config.dataset.class_subset = ""
  config.dataset.image_size = 224  # Side of the square crops the network sees.
  config.dataset.eval_resize = 256  # Eval: resize the short side to this, then centre crop.
  # Eval resize filter, antialiased like PIL's: "bilinear" (torchvision Resize's default, the
  # reference's linear evaluation) or "bicubic".
  config.dataset.eval_interpolation = "bilinear"
  config.dataset.cache = False  # Cache decoded training examples in memory (small sets only).
  config.dataset.shuffle_buffer = 16_384
  config.dataset.num_parallel_calls = -1  # -1: tf.data.AUTOTUNE.
  config.dataset.prefetch = 2  # Batches prefetched onto the devices.

  config.augment = ml_collections.ConfigDict()
  config.augment.mean = (0.485, 0.456, 0.406)  # ImageNet mean / std, on [0, 1] pixels.
  config.augment.std = (0.229, 0.224, 0.225)
  config.augment.view_a = view_config(blur_prob=1.0, solarize_prob=0.0)
  config.augment.view_b = view_config(blur_prob=0.1, solarize_prob=0.2)
  # Where the colour augmentations (jitter, grayscale, blur, solarize, channel permutation, noise)
  # run: False = on the host in tf.data (the design's default; TPU VM hosts have cores to spare),
  # True = inside the jitted train step on the accelerator (GPU hosts, Colab); the host then only
  # decodes, crops and flips. Batches leave the host as uint8 either way.
  config.augment.on_device = False

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "ResNet50"  # ResNet18 / 34 / 50 / 101 / 152.
  config.model.stem = "imagenet"  # "imagenet": 7x7/2 + max-pool; "cifar": 3x3/1, no pool.
  config.model.width = 1.0  # Channel multiplier: 1.0 gives stages 64-128-256-512.
  config.model.zero_init_residual = True
  # Per-image standardisation before the stem (models.standardize_images); off in the reference.
  config.model.standardize_input = False
  config.model.input_epsilon = 0.2  # In units of the normalised input (0.2 * std pixel levels).
  config.model.projector = "8192-8192-8192"
  config.model.projector_batch_norm = True
  # Asymmetry ablations (off in the method): an MLP on branch A's embedding ("" = none, "auto" =
  # two layers of the embedding size, or sizes "a-b-D"), and no gradient through branch B.
  config.model.predictor = ""
  config.model.stop_gradient_b = False
  config.model.dtype = "bfloat16"  # Compute dtype; parameters stay float32.
  config.model.bn_momentum = 0.9  # Flax convention: torch momentum 0.1.
  config.model.bn_epsilon = 1e-5

  config.loss = ml_collections.ConfigDict()
  config.loss.lambd = 0.0051
  config.loss.variant = "barlow_twins"
  config.loss.method = "auto"
  config.loss.eps = 1e-5
  config.loss.temperature = 0.1  # Only for variant == "cross_entropy".

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "lars"  # "lars", "sgd", "adamw" or "lamb".
  config.optim.lr_weights = 0.2  # Per 256 examples of global batch.
  config.optim.lr_biases = 0.0048  # Per 256 examples; biases and BN parameters (ndim == 1).
  config.optim.scale_lr_by_batch = True  # lr = base * global_batch / 256.
  config.optim.weight_decay = 1e-6
  config.optim.momentum = 0.9
  config.optim.eta = 0.001  # LARS trust coefficient.
  config.optim.b1 = 0.9  # adamw / lamb.
  config.optim.b2 = 0.999
  config.optim.adam_eps = 1e-8
  config.optim.schedule = "warmup_cosine"  # "warmup_cosine", "cosine" or "constant".
  config.optim.warmup_epochs = 10.0
  config.optim.end_lr_factor = 0.001
  # Multiplies every gradient before the optimizer. 1.0 = the true gradient of the global loss;
  # 1/W reproduces the reference's W-GPU dynamics (docs/reference.md §3).
  config.optim.gradient_scale = 1.0
  # Loss-spike guard (barlow_jax.spike_guard, docs/training.md): skip a step whose loss or gradient
  # norm is not finite, or whose loss exceeds spike_factor x the median of the last spike_window
  # accepted losses (0 = no spike test); the run stops after max_consecutive_skips in a row.
  config.optim.skip_nonfinite = False
  config.optim.spike_factor = 0.0
  config.optim.spike_window = 100
  config.optim.max_consecutive_skips = 10

  config.parallel = ml_collections.ConfigDict()
  # FSDP (barlow_jax.parallel): parameter leaves with at least this many elements, and their
  # optimizer state, are split over the devices instead of replicated; 0 = off. 2**20 shards the
  # projector's kernels and ResNet-50's widest convolutions.
  config.parallel.fsdp_min_size = 0

  config.batch_size = 2048  # Global, over all devices and hosts.
  config.num_epochs = 1000.0
  config.num_train_steps = -1  # > 0 overrides num_epochs.
  config.num_train_examples = -1  # > 0 overrides the dataset's own count (epoch length).

  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.image_every_steps = 5000  # Heatmap of C in TensorBoard.
  config.eval_every_steps = 0  # Periodic kNN monitor; 0 = only at the end.

  config.online_probe = True  # Stop-gradient linear head on the representation (labelled data).
  config.online_probe_lr = 0.1

  config.eval = ml_collections.ConfigDict()
  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.1
  # Standardise the features per dimension with the training split's mean / std before the kNN
  # (as the linear probe's "features" protocol does); off: InstDisc's monitor on raw features.
  config.eval.knn_standardize = False
  config.eval.final = True  # Run the end-of-training evaluation (results table).
  # Linear probe (docs/reference.md §5). lr is per 256 examples (lr * batch / 256).
  config.eval.probe_epochs = 100
  config.eval.probe_batch_size = 256
  config.eval.probe_lr = 0.3
  config.eval.probe_momentum = 0.9
  config.eval.probe_weight_decay = 1e-6
  # "auto": "features" for in-memory datasets (digits, cifar), else "reference" (crop+flip each
  # epoch through the frozen backbone). "features" standardises the features (train mean/std).
  config.eval.probe_protocol = "auto"
  # Final table baselines: random init (+ BN recalibrated on this many training batches), raw
  # pixels, and supervised training of the same backbone with the pretraining's optimizer and
  # schedule (config.optim), "time" or "steps" matched to pretraining.
  config.eval.baselines = True
  config.eval.bn_recalibration_batches = 50
  config.eval.supervised = True
  config.eval.supervised_match = "time"
  # Standalone evaluation (`python -m barlow_jax.evaluate`): what and where.
  config.eval.mode = "linear"  # "linear", "semisup", "knn" or "transfer".
  config.eval.backbone = ""  # Pretraining workdir, exported backbone dir, or converted PyTorch dir.
  config.eval.checkpoint_step = -1  # Workdir: -1 = backbone/ export if any, else latest ckpt.
  # Semi-supervised fine-tuning (docs/reference.md §5): labelled subset of the probe split.
  config.eval.semisup_subset = ""  # "1pct" / "10pct": TFDS imagenet2012_subset; "" = fraction.
  config.eval.semisup_fraction = 0.1  # Fixed-seed fraction of the probe split (in-memory sets).
  config.eval.semisup_balanced = True  # Same count per class.
  config.eval.semisup_seed = 0
  config.eval.semisup_epochs = 20
  config.eval.semisup_batch_size = 256
  config.eval.semisup_lr_backbone = 0.005  # Per 256 examples (paper: 0.002).
  config.eval.semisup_lr_head = 0.5
  config.eval.semisup_weight_decay = 0.0

  # Transfer (mode "transfer", configs/eval_transfer.py): frozen features of config.dataset's
  # probe_split (train) and eval_split (test), extracted once with the eval preprocessing.
  config.transfer = ml_collections.ConfigDict()
  # "single_label": linear probe (config.eval.probe_*), top-1 / top-5. "multi_label": VOC-style
  # TFDS data, per-class linear SVMs, mAP (barlow_jax/evaluation/voc07.py).
  config.transfer.task = "single_label"
  config.transfer.batch_size = 256  # Feature-extraction batch.
  # multi_label: an image's classes are those of its objects (a TFDS Sequence feature).
  config.transfer.objects_key = "objects"
  config.transfer.object_label_key = "label"
  config.transfer.object_difficult_key = "is_difficult"  # "" = no difficult flags.
  # SVMs (Goyal et al. 2019's VOC07 benchmark): cost per class by k-fold cross-validated AP.
  config.transfer.svm_costs = _VOC07_COSTS
  config.transfer.svm_folds = 3
  config.transfer.svm_positive_weight = 2.0
  config.transfer.svm_max_iter = 2000
  config.transfer.svm_jobs = -1  # joblib workers over (class, cost) pairs; -1 = all cores.
  return config


# The loss scale the authors give for a projector of output width D: 196 / D, "to match our
# research code" (facebookresearch/barlowtwins#9); at D = 8192 it is the first release's
# --scale-loss 0.024 (docs/reference.md §3). Rounded to two significant figures, as 0.024 is.
LOSS_SCALE_TIMES_WIDTH = 196


def projector_loss_scale(projector: str) -> float:
  """196 / D for projector sizes "a-b-D" (barlowtwins#9), to two significant figures.

  8192 -> 0.024 (the reference's), 4096 -> 0.048 (solo-learn's ImageNet value), 2048 -> 0.096.

  Raises:
    ValueError: `projector` does not end in a positive integer width.
  """
  try:
    width = int(str(projector).split("-")[-1])
  except ValueError:
    width = 0
  if width < 1:
    raise ValueError(f"projector sizes {projector!r} must end in a positive width, e.g. '8192'.")
  return float(f"{LOSS_SCALE_TIMES_WIDTH / width:.2g}")


def set_projector(config: ml_collections.ConfigDict, projector: str) -> None:
  """Sets `config.model.projector` and the bias / BN learning rate its loss scale implies.

  The first release multiplied the loss by s with one learning rate L; under LARS the trust ratio
  cancels s on the weights, so s acted on the biases and BN parameters only, and the current
  release states it as their own rate, `lr_biases = s * lr_weights` (0.0048 = 0.024 x 0.2;
  docs/reference.md §3). This applies that rule with `s = projector_loss_scale(projector)`:
  the one place a preset's projector width sets its bias rate.
  """
  config.model.projector = projector
  scale = projector_loss_scale(projector)
  config.optim.lr_biases = round(float(config.optim.lr_weights) * scale, 10)


def solo_learn_small_recipe(config: ml_collections.ConfigDict, *, stem: str) -> None:
  """solo-learn's ResNet-18 Barlow Twins optimisation (scripts/pretrain/cifar/barlow.yaml).

  A ResNet-18 (`stem` "cifar" or "imagenet") with a 2048-2048-2048 projector in bfloat16,
  lambda 0.0051, and LARS at lr 0.3 per 256 for weights and for biases / BN (solo-learn excludes
  them from the trust ratio and decay but gives them the same rate), trust coefficient 0.02,
  weight decay 1e-4, momentum 0.9, 10 warm-up epochs then cosine, and solo-learn's loss scale
  0.1 as `optim.gradient_scale` (it matters for the biases / BN only: LARS's trust ratio cancels
  it on the weights except against the decay). The CIFAR, STL-10 and ImageNet-100 presets share it.
  """
  config.model.backbone = "ResNet18"
  config.model.stem = stem
  config.model.width = 1.0
  config.model.projector = "2048-2048-2048"
  config.model.dtype = "bfloat16"
  config.loss.lambd = 0.0051
  config.optim.name = "lars"
  config.optim.lr_weights = 0.3
  config.optim.lr_biases = 0.3
  config.optim.eta = 0.02
  config.optim.weight_decay = 1e-4
  config.optim.momentum = 0.9
  config.optim.schedule = "warmup_cosine"
  config.optim.warmup_epochs = 10.0
  config.optim.gradient_scale = 0.1


def shrink_for_local(config: ml_collections.ConfigDict, *, image_size: int | None = None) -> None:
  """The presets' `:runlocal` variant: 2 steps of batch 16 in float32, a quarter-width network
  with a 256-256-256 projector, no warm-up, no kNN monitor and no end-of-run table; crops of
  `image_size` pixels (resized whole for evaluation) when given."""
  if image_size is not None:
    config.dataset.image_size = image_size
    config.dataset.eval_resize = image_size
  config.dataset.shuffle_buffer = 1000
  config.model.width = 0.25
  config.model.projector = "256-256-256"
  config.model.dtype = "float32"
  config.batch_size = 16
  config.num_train_steps = 2
  config.num_train_examples = 1024
  config.optim.warmup_epochs = 0.0
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.image_every_steps = 2
  config.eval_every_steps = 0
  config.eval.final = False
