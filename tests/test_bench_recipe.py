"""bench/recipe.py cannot rot: its tiny CPU version runs the real trainer, evaluation and checkpoint end to end."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a bench smoke run
def test_recipe_bench_tiny_runs_both_settings_and_projects_the_recipe():
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "recipe.py"), "--tiny"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for key in ("ours", "MMF"):
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{key}: steps"))
        sps = float(re.search(r"steps\s+([\d.]+) samples/s", line).group(1))
        losses = [float(x) for x in re.search(r"losses ([^)]*)\)", line).group(1).split(", ")]
        assert sps > 0 and len(losses) == 2 and all(math.isfinite(x) for x in losses), line
        assert re.search(r"val pass of 5,000 questions [\d.]+ s", line), line
    table = out[out.index("projected recipe"):]
    for part in ("steps", "evals", "checkpoints", "test", "total"):
        assert re.search(rf"^\s*{part}\s+[\d.]+ (min|s)\s+[\d.]+ (min|s)", table, re.M), (part, table)
    assert re.search(r"ours vs MMF's setting: x[\d.]+ faster", out), out[-2000:]


def test_decode_bench_tiny_checks_identical_predictions_and_prints_the_ratio():
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "decode.py"), "--models", "tiny", "--batch", "8",
                           "--questions", "8", "--repeat", "1"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("tiny"))
    assert "argmax identical at every step: True" in line and "predictions vary across steps: True" in line
    assert re.search(r"incremental\s+[\d.]+ q/s \([\d.]+ s\)\s+x[\d.]+", line), line


@pytest.mark.slow  # a bench smoke run
def test_decode_bench_under_bf16_compares_the_flips_with_the_precisions_own():
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "decode.py"), "--models", "tiny", "--batch", "16",
                           "--questions", "32", "--repeat", "1", "--amp", "bf16"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"incremental and full recompute (\d+)/32; by full recompute in bf16 and in fp32 (\d+)/32",
                  proc.stdout)
    assert m, proc.stdout[-2000:]
    assert int(m.group(1)) <= int(m.group(2))


def test_train_bench_sorts_kernels_into_the_parts_of_a_step():
    """The profile summary of bench/train.py (read on the GPU machine) files kernel names of cuBLAS, inductor,
    cuDNN/flash attention and fused Adam under the right part of the step."""
    sys.path.insert(0, str(ROOT / "bench"))
    from train import kernel_kind

    names = {"sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matmul",
             "nvjet_tst_192x192_64x3_2x1_v_bz_coopA_TNN": "matmul",
             "triton_tem_fused_addmm_0": "matmul",
             "triton_per_fused__to_copy_native_layer_norm_3": "fused elementwise/norm (triton)",
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3": "attention",
             "fmha_cutlassF_bf16_aligned_64x64_rf_sm80": "attention",
             "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer + clip",
             "Memcpy HtoD (Pinned -> Device)": "copy/fill/gather",
             "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": "elementwise/reduce (aten)",
             "void cub::DeviceSegmentedRadixSortKernel": "other"}
    assert {n: kernel_kind(n) for n in names} == names


@pytest.mark.slow  # a bench smoke run
def test_train_bench_smoke_runs_the_trim_baseline_profile_and_sdpa_check():
    """bench/train.py (what the GPU session runs) cannot rot: the every-row baseline, the profile summary and the
    attention-kernel report run on the CPU with the full-size model at batch 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--device", "cpu", "--batch", "2",
                           "--steps", "2", "--warmup", "1", "--questions", "16", "--images", "4", "--sdpa-check",
                           "--modes", "fp32+fullrows,fp32", "--profile", "fp32"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"sdpa: attention_backend=auto: eager picks \w+", out), out[-2000:]
    assert "profile: no GPU kernels recorded over 2 steps" in out  # a CPU has none; the summary still runs
    rates = dict(re.findall(r"^\s*(fp32(?:\+fullrows)?):\s+([\d.]+) samples/s", out, re.M))
    assert set(rates) == {"fp32", "fp32+fullrows"} and all(float(v) > 0 for v in rates.values()), out[-2000:]
