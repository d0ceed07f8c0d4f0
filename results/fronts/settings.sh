# The fronts study's settings, sourced by reproduce.sh and sensitivity.sh: for $setting, the
# config (CONFIG), every setting's study flags (COMMON), the setting's probes (PROBES) and what its
# reports read (REPORT: its name, task metrics and matched task gains, as study.py takes them).
DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
COMMON=(--regime frozen --seeds 0,1,2,3,4,5,6,7,8,9 --lambdas 0.001,0.003,0.01,0.03,0.1,0.3,1
        --methods joint,gradprom,pcgrad,gp_norm --variant "gradprom_ema:gradprom.gradient_ema=0.9"
        --steps 300 --recognizer_steps 600 --probe_lambda 0.01 --probe_every 3 --extend_grid)
case $setting in
  pneumoniamnist)
    CONFIG=(--config configs/pneumoniamnist.py --config.data.data_dir="$DATA_DIR")
    REPORT=(--setting "PneumoniaMNIST 28×28, Poisson denoising (20 photons) + classification, frozen recogniser, 300 steps"
            --task_metric balanced_accuracy,auc
            --task_gains balanced_accuracy=0.05,0.1,0.2 --task_gains auc=0.005,0.01,0.02)
    PROBES=(--probe_batches 8,32,128) ;;
  ph2_sr8_noisy_seg)
    CONFIG=(--config configs/ph2.py --config.data.data_dir="$DATA_DIR"
            '--config.data.image_size=(96, 128)' '--config.data.patch_size=(48, 64)'
            --config.model.enhancer.features=16 --config.model.enhancer.num_blocks=2
            --config.model.recognizer.features=8
            '--config.task.degradation=downsample(scale=8) > gaussian_noise(sigma=0.1)')
    REPORT=(--setting "PH2 96×128, ×8 super-resolution + noise σ 0.1 + lesion segmentation, frozen recogniser, 300 steps"
            --task_metric dice --task_gains dice=0.01,0.02,0.03)
    PROBES=(--probe_batches 8,32) ;;
  *) echo "unknown setting $setting" >&2; exit 2 ;;
esac
