"""bench/gpu_profile.py's reading of an optimised GPU module: kinds and GEMM FLOPs."""
# ruff: noqa: E501  (HLO lines are long)
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from gpu_profile import _union_ns, hlo_index  # noqa: E402

HLO = """\
HloModule jit_update, entry_computation_layout={()}

%fused_dot (p0: bf16[512,64], p1: bf16[64,32]) -> bf16[512,32] {
  %p0 = bf16[512,64]{1,0} parameter(0)
  %p1 = bf16[64,32]{1,0} parameter(1)
  ROOT %dot.3 = bf16[512,32]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(update)/jvp(MAE)/fc2/dot_general"}
}

%fused_add (q0: bf16[512,32]) -> bf16[512,32] {
  %q0 = bf16[512,32]{1,0} parameter(0)
  ROOT %add.1 = bf16[512,32]{1,0} add(%q0, %q0), metadata={op_name="jit(update)/jvp(MAE)/add"}
}

ENTRY %main (a: bf16[51200,768], b: bf16[768,3072], c: bf16[4,200,16,32]) -> bf16[512,32] {
  %a = bf16[51200,768]{1,0} parameter(0)
  %b = bf16[768,3072]{1,0} parameter(1)
  %c = bf16[4,200,16,32]{3,2,1,0} parameter(2)
  %custom-call.7 = (bf16[51200,3072]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", metadata={op_name="jit(update)/transpose(jvp(MAE))/fc1/dot_general"}, backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %custom-call.9 = (bf16[4,200,16,32]{3,2,1,0}, u8[0]{0}) custom-call(%c, %c, %c), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(update)/attn"}
  %gemm_fusion.2 = bf16[512,32]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  ROOT %loop_add_fusion = bf16[512,32]{1,0} fusion(%gemm_fusion.2), kind=kLoop, calls=%fused_add
}
"""


def test_hlo_index_kinds_flops_and_op_names():
    index = hlo_index(HLO)
    gemm = index["custom-call.7"]
    assert gemm["kind"] == "gemm"
    assert gemm["flops"] == 2 * 51200 * 3072 * 768  # 2·M·N·K
    assert gemm["op_name"].endswith("transpose(jvp(MAE))/fc1/dot_general")
    assert index["custom-call.9"]["kind"] == "attention"
    fused = index["gemm_fusion.2"]
    assert fused["kind"] == "gemm_fusion" and fused["flops"] == 2 * 512 * 32 * 64
    assert fused["op_name"] == "jit(update)/jvp(MAE)/fc2/dot_general"  # from inside
    loop = index["loop_add_fusion"]
    assert loop["kind"] == "fusion:kLoop" and loop["flops"] == 0.0
    assert loop["op_name"] == "jit(update)/jvp(MAE)/add"


def test_union_of_intervals_counts_overlaps_once():
    # [0,10) ∪ [5,15) ∪ [20,25) ∪ [21,22) = 15 + 5
    assert _union_ns([(20, 25), (0, 10), (5, 15), (21, 22)]) == 20
    assert _union_ns([]) == 0


def test_kernel_owner_by_hlo_op_or_by_the_fusion_name_it_carries():
    from gpu_profile import kernel_owner

    index = hlo_index(HLO)
    assert kernel_owner("nvjet_sm90_tst_128x160", "custom-call.7", index) == "custom-call.7"
    # inside a command buffer the hlo_op names the buffer; the kernel carries the fusion's name
    assert kernel_owner("gemm_fusion_2", "command_buffer_5", index) == "gemm_fusion.2"
    assert kernel_owner("loop_add_fusion", "command_buffer_5", index) == "loop_add_fusion"
    assert kernel_owner("cudnn_generated_fort_native_sdpa", "command_buffer_5", index) == ""


def test_library_kernels_are_named_by_their_maker():
    from gpu_profile import library_of

    assert library_of("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_TNT") == "cuBLAS"
    assert library_of("cudnn_generated_fort_native_sdpa_sm90_flash_bprop") == "cuDNN"
    assert library_of("void cublasLt::splitKreduce_kernel<32, 16, int>") == "cuBLAS"
    assert library_of("Memset 3") == "library"
