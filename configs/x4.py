"""LFc-SR x4 trained with PD-ADMM: the paper's setting, and small variants.

Launch (paper setting, DIV2K through TFDS):
  python -m lfcsr_jax.main --config=configs/x4.py --workdir=/tmp/lfcsr_x4
Variants: `--config=configs/x4.py:demo` (offline, minutes on a CPU), `--config=configs/x4.py:tiny`
(seconds, for tests). Override any field: `--config.admm.rho=1e-3`.
Every number below is from ../shared/design/docs/design.md unless its comment says otherwise.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("paper", "demo", "tiny")  # get_config's argument ('' = 'paper').


def _model_config() -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict()
    model.scale = 4  # super-resolution factor; the whole project is x4 like the paper.
    model.rgb_mean = (0.4488, 0.4371, 0.4040)  # DIV2K mean, MeanShift on the 0-255 scale.
    model.rgb_range = 255.0  # images enter the networks as float in [0, 255].
    # G_O = HAN (objective stage).
    model.han_resgroups = 10  # residual groups (LAM attends over these outputs + body conv = 11).
    model.han_resblocks = 20  # RCAB per residual group.
    model.han_features = 64  # feature channels.
    model.han_reduction = 16  # channel-attention squeeze ratio (64 -> 4).
    # G_P = wavelet-domain Res-clique network (perceptual stage).
    model.clique_blocks = 15  # Res-clique blocks.
    model.clique_growth = 32  # g: channels of each of the four groups in a block.
    model.clique_stem = 32  # channels of the first conv after the DWT (skip s1).
    # The discriminator's first Linear layer is tied to the HR patch (input.lr_patch * scale).
    # VGG19 feature layer used by the contextual loss.
    model.vgg_layer = "relu3_4"
    # Compute dtype of the convolutions; parameters are always float32.
    model.dtype = "float32"  # or "bfloat16" on accelerators.
    # How the generators execute (never what they compute; exports may differ in these):
    model.remat = False  # recompute each generator block in the backward pass (less memory).
    model.han_block_unroll = 1  # RCABs per iteration of the loop in a group (20 = no loop).
    model.han_group_unroll = 1  # residual groups per iteration of the loop over groups.
    model.clique_unroll = 1  # Res-clique blocks per loop iteration (15 = no loop).
    model.pretrain_unrolled = True  # GPU: pre-training without block loops; TPU keeps them.
    return model


def _loss_config() -> ml_collections.ConfigDict:
    loss = ml_collections.ConfigDict()
    loss.contextual_weight = 0.1  # weight of L_CX in L_P.
    loss.contextual_bandwidth = 0.1  # h of the contextual loss.
    loss.lr_band_weight = 1.0  # weight of L1 on the two-level Haar LL (f_down, Eq. 6).
    loss.gan_weight = 0.001  # weight of the non-saturating generator loss.
    # How the 0-255 image reaches VGG19, whose weights file names its own input convention
    # ('torchvision': [0, 1] then ImageNet mean/std; 'caffe' (Keras): 0-255 minus the Caffe mean).
    # 'as_weights': exactly what that convention requires (our default, docs/design.md 9.3);
    # 'reference': 0-255 values into the 0-1 ImageNet statistics, as the authors' code did
    # (torchvision-convention weights only).
    loss.vgg_input_scaling = "as_weights"
    # Local file with VGG19 ImageNet weights converted by `python -m lfcsr_jax.convert vgg19`.
    # Empty: a randomly initialised VGG19 (fine for tests and the demo, not for the paper), fed
    # as torchvision-convention weights.
    loss.vgg_weights = ""
    return loss


def _admm_config() -> ml_collections.ConfigDict:
    admm = ml_collections.ConfigDict()
    # 'admm': PD-ADMM (paper); 'regularizer': Eq. 7 joint objective with weight lambda_r
    # (lambda_r = 0 is the unconstrained two-stage model).
    admm.method = "admm"
    admm.rho = 1e-4  # penalty weight with the MEAN reduction of rho/2 * mean((T(Y)-T(Y')+s)^2).
    admm.lambda_r = 0.0  # weight of ||T(Y) - T(Y')||_1 (mean) when method == 'regularizer'.
    # What the constraint ties together: 'low' = T_LF bands (paper); 'high' = Haar HL/LH/HH (P-O).
    admm.constrained_band = "low"
    admm.lowpass = "haar"  # T_LF: 'haar' (one-level LL, HR/2) or 'gaussian' (21x21, sigma 3).
    admm.order = "objective_first"  # 'objective_first' (O-P, paper) or 'perceptual_first' (P-O).
    admm.grad_clip = 1e-4  # clip generator gradients by value to +-grad_clip before each step.
    return admm


def _optim_config() -> ml_collections.ConfigDict:
    optim = ml_collections.ConfigDict()
    optim.b1 = 0.9  # Adam beta1 (all optimizers).
    optim.b2 = 0.999  # Adam beta2.
    optim.eps = 1e-8  # Adam epsilon.
    optim.pretrain_lr = 1e-4  # joint L1 pre-training learning rate.
    optim.pretrain_decay_every_epochs = 100  # x pretrain_decay_factor every this many epochs.
    optim.pretrain_decay_factor = 0.1
    optim.generator_lr = 5e-5  # both generators in PD-ADMM.
    optim.generator_milestones_epochs = (20, 50, 70, 100, 140)  # lr x factor at each.
    optim.generator_decay_factor = 0.5  # the code's factor (docs/design.md section 6).
    optim.disc_lr = 5e-5  # discriminator, constant.
    return optim


def _input_config() -> ml_collections.ConfigDict:
    inp = ml_collections.ConfigDict()
    # 'tfds': TFDS div2k/bicubic_x4; 'folder': HR images (LR made by MATLAB-exact imresize);
    # 'paired': HR/LR folders; 'skimage': scikit-image's bundled photos (offline demo).
    inp.source = "tfds"
    inp.tfds_name = "div2k/bicubic_x4"
    inp.tfds_data_dir = ""  # TFDS data_dir (e.g. a gs:// bucket on a TPU VM); '' = TFDS default.
    inp.tfds_manual_dir = ""  # where the DIV2K archives were placed, when TFDS must prepare them.
    inp.hr_dir = ""  # 'folder'/'paired': the HR images.
    inp.lr_dir = ""  # 'paired': the LR images.
    inp.val_hr_dir = ""  # validation HR folder ('' with tfds: DIV2K 0801-0810).
    inp.val_lr_dir = ""  # validation LR folder ('' = made with imresize).
    inp.val_count = 10  # validation images (DIV2K 0801-0810 in the paper).
    # Folder for LR images made by imresize from HR-only folders, reused across restarts
    # ('' = made in memory at every start). Never inside the HR folder.
    inp.lr_cache_dir = ""
    inp.lr_patch = 36  # LR crop size; HR = lr_patch * scale = 144.
    inp.prefetch = 4  # batches prefetched by tf.data.
    return inp


def _schedule_config() -> ml_collections.ConfigDict:
    sched = ml_collections.ConfigDict()
    sched.steps_per_epoch = 1000  # the paper's "epoch": 1000 iterations of batch 16.
    sched.pretrain_epochs = 400  # joint L1 pre-training.
    sched.admm_epochs = 200  # PD-ADMM.
    return sched


def _train_config() -> ml_collections.ConfigDict:
    train = ml_collections.ConfigDict()
    train.global_batch_size = 16  # over all devices and hosts (the paper's batch).
    train.phases = ("pretrain", "admm")  # which phases to run, in order.
    train.init_checkpoint = ""  # an export or converted checkpoint to start from ('' = random).
    train.log_every_steps = 100
    # TensorBoard event files: '' = the workdir (local or gs://); another folder; or 'none'.
    train.tensorboard_dir = ""
    train.image_every_steps = 5000
    train.checkpoint_every_steps = 5000
    train.keep_checkpoints = 3
    train.eval_every_steps = 10000
    train.allow_config_change = False  # refuse a workdir written by another config unless True.
    train.distributed = False  # call jax.distributed.initialize() (multi-host).
    train.lpips_dir = ""  # folder with LPIPS weights for validation LPIPS ('' = skipped).
    return train


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's x4 configuration; `arg` picks a variant: '', 'demo' or 'tiny'."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = _model_config()
    config.loss = _loss_config()
    config.admm = _admm_config()
    config.optim = _optim_config()
    config.input = _input_config()
    config.schedule = _schedule_config()
    config.train = _train_config()
    if arg in (None, "", "paper"):
        return config
    if arg == "demo":
        return _demo(config)
    if arg == "tiny":
        return _tiny(config)
    raise ValueError(f"configs/x4.py: unknown variant {arg!r}; expected '' or one of {VARIANTS}")


def _small_model(config: ml_collections.ConfigDict, groups: int, blocks: int, feats: int,
                 clique_blocks: int, growth: int) -> None:
    config.model.han_resgroups = groups
    config.model.han_resblocks = blocks
    config.model.han_features = feats
    config.model.han_reduction = 4  # keeps a 2+ channel squeeze in the narrow models.
    config.model.clique_blocks = clique_blocks
    config.model.clique_growth = growth
    config.model.clique_stem = growth


def _demo(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Offline demo: scikit-image photos, a small model, both phases, ~6 min on 2 CPU cores."""
    _small_model(config, groups=2, blocks=2, feats=16, clique_blocks=2, growth=8)
    config.input.source = "skimage"
    config.input.lr_patch = 16  # HR 64
    config.input.val_count = 3
    config.schedule.steps_per_epoch = 50
    config.schedule.pretrain_epochs = 30  # 1500 steps
    config.schedule.admm_epochs = 3  # 150 steps
    config.train.global_batch_size = 4
    config.train.log_every_steps = 50
    config.train.image_every_steps = 500
    config.train.checkpoint_every_steps = 500
    config.train.eval_every_steps = 500
    # A small model from scratch in minutes: a larger pre-training lr, cut x0.1 near the end.
    config.optim.pretrain_lr = 5e-4
    config.optim.pretrain_decay_every_epochs = 24
    config.optim.generator_milestones_epochs = (2,)
    return config


def _tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Seconds on a CPU: for tests of the whole program."""
    _small_model(config, groups=2, blocks=1, feats=8, clique_blocks=1, growth=4)
    config.input.source = "skimage"
    config.input.lr_patch = 8
    config.input.val_count = 2
    config.schedule.steps_per_epoch = 2
    config.schedule.pretrain_epochs = 2
    config.schedule.admm_epochs = 2
    config.train.global_batch_size = 4
    config.train.log_every_steps = 1
    config.train.image_every_steps = 4
    config.train.checkpoint_every_steps = 4
    config.train.eval_every_steps = 4
    config.optim.generator_milestones_epochs = (1,)
    return config
