"""Memory fit: weights first, then as many KV blocks as the rest holds."""
import pytest

from testbed.model.config import named_config
from testbed.sim.hardware import load_profile
from testbed.sim.memory import DoesNotFitError, check_memory_fit


def test_72b_does_not_fit_one_h100():
    with pytest.raises(DoesNotFitError, match=r"qwen2-72b bfloat16 needs 145 GB of weights; h100 has 80 GB"):
        check_memory_fit(named_config("qwen2-72b"), load_profile("h100"))


def test_block_count_by_hand():
    # Qwen2-0.5B bf16 on an H100: 80 GB x 0.9 usable, minus 494,032,768 parameters x 2 bytes;
    # a 16-token block is 16 x (24 layers x 2 (K, V) x 2 heads x 64 x 2 bytes) = 196,608 bytes.
    fit = check_memory_fit(named_config("qwen2-0.5b"), load_profile("h100"), "bfloat16", 16)
    assert named_config("qwen2-0.5b").num_params() == 494_032_768
    assert fit.weight_bytes == 494_032_768 * 2
    assert fit.block_bytes == 196_608
    assert fit.num_blocks == (72_000_000_000 - 988_065_536) // 196_608 == 361_185
    assert fit.kv_bytes == fit.num_blocks * fit.block_bytes


def test_kv_pool_of_a_given_size():
    fit = check_memory_fit(named_config("qwen2-0.5b"), load_profile("h100"),
                           kv_memory_bytes=1e9, block_size=32)
    assert fit.num_blocks == int(1e9 // (32 * 12_288))
    with pytest.raises(DoesNotFitError, match="KV pool of 100 GB does not fit"):
        check_memory_fit(named_config("qwen2-0.5b"), load_profile("h100"), kv_memory_bytes=100e9)


def test_minimum_kv_pool():
    # Qwen2.5-32B bf16 (~65.5 GB) leaves ~6.5 GB of an H100's 72 usable GB: ~24,700 tokens at 256 KiB each.
    model, h100 = named_config("qwen2.5-32b"), load_profile("h100")
    assert check_memory_fit(model, h100, min_kv_tokens=20_000).num_blocks * 16 >= 20_000
    with pytest.raises(DoesNotFitError, match="fewer than the 6250 that 100000 tokens need"):
        check_memory_fit(model, h100, min_kv_tokens=100_000)


def test_tensor_parallel_splits_weights_and_blocks():
    model, h100 = named_config("qwen2-72b"), load_profile("h100")
    with pytest.raises(DoesNotFitError, match="72.7 GB of weights per device \\(tensor_parallel=2\\)"):
        check_memory_fit(model, h100, tensor_parallel=2)
    fit = check_memory_fit(model, h100, tensor_parallel=4)
    assert fit.weight_bytes == pytest.approx(model.num_params() * 2 / 4)
    assert fit.block_bytes == 16 * model.kv_bytes_per_token("bfloat16") / 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="memory_utilization"):
        check_memory_fit(named_config("qwen2-0.5b"), load_profile("h100"), memory_utilization=1.5)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        check_memory_fit(named_config("qwen2-0.5b"), load_profile("h100"), "int3")
