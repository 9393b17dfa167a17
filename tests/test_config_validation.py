"""Every check runs before anything compiles; the CLI turns each into one line and exit status 2."""

import pytest

from tests.conftest import run_main, tiny_digits_config
from vit_jax import config_validation as cv
from vit_jax.build import set_up


@pytest.mark.parametrize(
    "arg, message",
    [
        ("image_size=18", r"config.image_size = \(18, 18\): not a multiple of the patch size 4x4 .*; allowed: "
                          r"multiples of the patch size, or config.model.pad='zeros'"),
        ("model.num_heads=5", r"config.model \(variant 'Ti/4'\): hidden_size 64 is not divisible by num_heads 5"),
        ("dataset=no_such_dataset", r"config.dataset = 'no_such_dataset': unknown dataset 'no_such_dataset'"),
        ("train_split=training", r"config.train_split = 'training': unknown split of 'sklearn_digits'; allowed: "
                                 r"\['test', 'train', 'validation'\]"),
        ("eval_split=validation[:200%]", r"config.eval_split = 'validation\[:200%\]': unknown split"),
        ("optimizer.name=adam", r"config.optimizer.name = 'adam': unknown value; allowed: 'adamw', 'sgd', 'lamb', 'lion'"),
        ("optimizer.schedule=step", r"config.optimizer.schedule = 'step': unknown value; allowed: 'cosine', 'linear', 'constant'"),
        ("pp.train_crop=random", r"config.pp.train_crop = 'random': unknown value; allowed: 'none', 'pad', 'inception'"),
        ("batch_size=0", r"config.batch_size = 0: must be a positive integer"),
        ("label_smoothing=1.0", r"config.label_smoothing = 1.0: must be in \[0, 1\)"),
        ("accum_steps=3", r"config.batch_size = 128: not divisible by 1 data-parallel device\(s\) x accum_steps 3"),
        ("mesh=(('model',-1),)", r"config.mesh = \(\('model', -1\),\): .* must .* include a 'data' axis"),
        ("sharding_rules=(('[',),)", r"config.sharding_rules\[0\] = '\[': not a regular expression"),
        ("sharding_rules=(('.*','zero3'),)", r"config.sharding_rules\[0\] = \('.\*', 'zero3'\): must be \(regex, rule\)"),
        ("mesh=(('data',),)", r"config.mesh = \(\('data',\),\): mesh .* must be \(name, size\) pairs"),
        # the optimizer's numbers (optim.check_optimizer) and the seed
        ("optimizer.learning_rate=1e400", r"config.optimizer.learning_rate = inf: must be a finite number in \(0, inf\)"),
        ("optimizer.b2=1.0", r"config.optimizer.b2 = 1.0: must be a finite number in \[0, 1\)"),
        ("optimizer.eps=0.0", r"config.optimizer.eps = 0.0: must be a finite number in \(0, inf\)"),
        ("optimizer.weight_decay=-0.5", r"config.optimizer.weight_decay = -0.5: must be a finite number in \[0, inf\)"),
        ("optimizer.warmup_steps=-10", r"config.optimizer.warmup_steps = -10: must be an integer >= 0"),
        ("optimizer.name=lion,optimizer.lion.b2=1.0", r"config.optimizer.lion.b2 = 1.0: must be a finite number in \[0, 1\)"),
        ("optimizer.name=lamb,optimizer.lamb.eps=0.0", r"config.optimizer.lamb.eps = 0.0: must be a finite number in \(0"),
        ("optimizer.name=adafactor,optimizer.adafactor.momentum_dtype='float16'",
         r"config.optimizer.adafactor.momentum_dtype = 'float16': must be one of \('float32', 'bfloat16'\)"),
        ("optimizer.name=adafactor,optimizer.adafactor.min_dim_size_to_factor=0",
         r"config.optimizer.adafactor.min_dim_size_to_factor = 0: must be an integer >= 1"),
        ("seed=-1", r"config.seed = -1: must be an integer in \[0, 2\*\*32\)"),
        ("repeated_augmentation=3,packing.enabled=True", r"config.repeated_augmentation = 3: repeats images of the "
                                                         r"per-image stream; packing.enabled=True packs its own"),
        ("distillation.kind=medium", r"config.distillation.kind = 'medium': must be one of \('hard', 'soft'\)"),
        ("distillation.alpha=1.5", r"config.distillation.alpha = 1.5: must be a number in \[0, 1\]"),
        ("distillation.teacher=/no/such/teacher", r"config.distillation.teacher = '/no/such/teacher': cannot be read: "),
        ("bce_target_threshold=0.0", r"config.bce_target_threshold = 0.0: thresholds binary cross-entropy's targets; "
                                     r"config.loss is 'cross_entropy'"),
        ("loss=hinge", r"config.loss = 'hinge': unknown value; allowed: 'cross_entropy', 'binary_cross_entropy'"),
        ("pp.color_jitter=-1.0", r"config.pp: color_jitter must be a number >= 0"),
        ("optimizer.mu_dtype=float16", r"config.optimizer.mu_dtype = 'float16': must be one of \('float32', "
                                       r"'bfloat16'\) or None"),
        ("pp.rand_augment=rand-m9,pp.auto_augment=v0", r"config.pp: rand_augment and auto_augment are two policies "
                                                       r"for the same place: give one"),
        ("repeated_augmentation=0", r"config.repeated_augmentation = 0: must be an integer >= 1 \(1: none; DeiT's 3\)"),
        # the preprocessing (Preprocess checks its own fields)
        ("pp.value_range=(1,-1)", r"config.pp: value_range must be \(low, high\) with low < high; got \(1, -1\)"),
        ("pp.crop_padding=-1", r"config.pp: crop_padding must be an int in \[0, 16\]"),
        ("pp.crop_scale=(1.0,0.08)", r"config.pp: crop_scale must be \(min, max\) area fractions"),
        ("pp.crop_ratio=(0,0)", r"config.pp: crop_ratio must be \(min, max\) aspect ratios"),
        ("pp.mean=(0.5,0.5),pp.std=(0.0,1.0)", r"config.pp: mean and std must be given together, as many of each, std > 0"),
        ("pp.channels=2", r"config.pp: channels must be None \(as stored\), 1 or 3; got 2"),
        ("pp.crop_pct=1.5", r"config.pp: crop_pct must be in \(0, 1\]"),
        # augmentation (each checks its own fields), layer decay
        ("pp.rand_augment=rand-m9-z2", r"config.pp: rand_augment 'rand-m9-z2': section 'z2' is not one of"),
        ("mixup.mode=pairs", r"config.mixup: mode must be one of \('batch', 'pair', 'elem'\); got 'pairs'"),
        ("random_erasing.max_area=2.0", r"config.random_erasing: min_area and max_area must satisfy"),
        ("optimizer.layer_decay=1.5", r"config.optimizer.layer_decay = 1.5: must be a finite number in \(0, 1\]"),
        ("optimizer.frozen='['", r"config.optimizer.frozen = '\[': not a regular expression"),
        ("flexi.patch_sizes=(0,)", r"config.flexi.patch_sizes = \(0,\): "),
        ("flexi.probabilities=(1.0,)", r"config.flexi.probabilities = \(1.0,\): set without config.flexi.patch_sizes"),
        ("init.step=5", r"config.init.step = 5: set without config.init.path"),
        # the data: an empty split
        ("train_split=train[:0]", r"config.train_split = 'train\[:0\]': no examples in this split of 'sklearn_digits'"),
        ("cache_in_memory='sometimes'", r"config.cache_in_memory = 'sometimes': unknown value; allowed: 'auto', True, "
                                        r"False"),
    ],
)
def test_bad_configs_fail_before_compiling_with_field_value_and_allowed(arg, message, digits_data_dir):
    config = tiny_digits_config(digits_data_dir, arg)
    with pytest.raises(cv.ConfigError, match=message):
        set_up(config)


def test_a_data_dir_that_is_a_file_is_refused(digits_data_dir, tmp_path):
    config = tiny_digits_config(digits_data_dir)
    config.data_dir = str(tmp_path / "a_file")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(cv.ConfigError, match=r"config.data_dir = '.*a_file': not a directory"):
        set_up(config)


def test_batch_must_split_over_the_data_parallel_devices(digits_data_dir):
    config = tiny_digits_config(digits_data_dir, "batch_size=100")
    with pytest.raises(cv.ConfigError, match=r"config.batch_size = 100: not divisible by 8 data-parallel device\(s\) "
                                             r"x accum_steps 1 and by 1 process\(es\); allowed: multiples of 8"):
        cv.check_devices(config, num_devices=8, process_count=1)
    assert cv.check_devices(tiny_digits_config(digits_data_dir, "batch_size=100,mesh=(('data',-1),('model',2))"),
                            num_devices=4, process_count=1) == {"data": 2, "model": 2}


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    config = tiny_digits_config(str(tmp_path), "dataset=mnist")
    with pytest.raises(cv.ConfigError, match=r"config.dataset = 'mnist': dataset 'mnist' is not prepared under .*"
                                             r"tfds build mnist --file_format=array_record"):
        set_up(config)


def test_cli_reports_one_line_and_exit_status_2(tmp_path, digits_data_dir):
    result = run_main(tmp_path / "run", "--config=configs/digits.py:optimizer.name=adam",
                      f"--config.data_dir={digits_data_dir}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.optimizer.name = 'adam': unknown value; allowed: 'adamw', 'sgd', 'lamb', 'lion', 'adafactor'")
    assert not (tmp_path / "run" / "checkpoints").exists()
