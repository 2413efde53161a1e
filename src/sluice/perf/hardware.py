"""GPU specifications: the peak numbers a roofline needs.

Why a table and not a query: simulations must run on a laptop without the GPU they model, so
the numbers are data. Peaks are *dense* (no 2:4 sparsity) tensor-core throughput; the fitted
model learns how far below peak real kernels run. ``mem_bytes`` is what the driver reports as
total memory (``torch.cuda.mem_get_info``), which is what vLLM multiplies by
``gpu_memory_utilization``; where we know a measured value we use it, otherwise the marketing
capacity in GiB minus the ~0.6 GiB the driver reserves.

Sources (checked 2026):
* A100: NVIDIA A100 Tensor Core GPU datasheet (312 TFLOPS BF16 dense; 1,555 GB/s (40 GB) and
  2,039 GB/s (80 GB SXM) HBM2e; NVLink 600 GB/s bidirectional).
* H100 SXM / PCIe: NVIDIA H100 datasheet (989.5 / 756 TFLOPS BF16 dense, 1,979 / 1,513 FP8;
  3.35 / 2.0 TB/s; NVLink 900 / 600 GB/s bidirectional).
* H200: NVIDIA H200 datasheet (same compute as H100 SXM, 141 GB HBM3e at 4.8 TB/s).
* B200: NVIDIA DGX/HGX B200 datasheet (2.25 PFLOPS BF16 dense, 4.5 PFLOPS FP8 dense, 180 GB
  HBM3e at 7.7-8 TB/s, NVLink 5 1.8 TB/s).
* L40S: NVIDIA L40S datasheet (362 TFLOPS BF16 dense, 733 FP8 dense, 48 GB GDDR6 864 GB/s,
  PCIe Gen4 x16, no NVLink).
* A40: NVIDIA A40 datasheet (149.7 TFLOPS BF16 dense, 48 GB GDDR6 696 GB/s, NVLink bridge
  112.5 GB/s).
* RTX 4090: NVIDIA Ada Lovelace architecture whitepaper, appendix (165.2 TFLOPS FP16/BF16 with
  FP32 accumulate dense, 330 FP8 dense, 24 GB GDDR6X at 1,008 GB/s); total memory 25,250,627,584
  bytes as measured in the LLMServingSim RTX 4090 run metadata.
* RTX PRO 6000 Blackwell: NVIDIA RTX PRO 6000 Blackwell datasheet / Blackwell RTX whitepaper
  (~504 TFLOPS BF16 dense, ~1,008 FP8 dense, 96 GB GDDR7 at 1,792 GB/s, PCIe Gen5 x16).
* Host<->device copies: PCIe Gen4 x16 ~25 GB/s, Gen5 x16 ~50 GB/s achieved (pinned memory).
* Streaming multiprocessors (``sms``, used to count waves of attention thread blocks): A100
  108, H100 SXM5 132 / PCIe 114 (NVIDIA A100 and H100 architecture whitepapers), H200 132,
  B200 148 (2 x 74), L40S 142 (L40S datasheet: 18,176 CUDA cores / 128), A40 84 (GA102, 10,752
  CUDA cores / 128), RTX 4090 128 (Ada whitepaper), RTX PRO 6000 Blackwell 188 (24,064 CUDA
  cores / 128).
* L2 cache (``l2_bytes``; used only to price isolated-kernel *benchmark* rows, which re-run one
  kernel on a warm L2 — the runtime streams every layer and stays cold, see ``perf.fit.bench_warm``):
  A100 40 MB (A100 architecture whitepaper), H100 SXM5 / PCIe 50 MB (H100 architecture
  whitepaper), H200 50 MB (the same GH100 die), L40S 96 MB (L40S datasheet / Ada whitepaper:
  AD102), A40 6 MB (Ampere GA102 whitepaper), RTX 4090 72 MB (Ada whitepaper appendix: 73,728
  KB), RTX PRO 6000 Blackwell 128 MB (RTX Blackwell whitepaper: GB202). B200: not in its
  datasheet, left 0 (= never warm).
* L2 read bandwidth (``l2_bw``, bytes/s; benchmark pricing only, like ``l2_bytes``: the rate at
  which a re-run kernel reads L2-resident data is ``l2_bw`` x a fitted efficiency, see
  ``perf.fit.l2_factor``). One source for all values, so that they are measured the same way:
  the ``gpu-l2-cache`` microbenchmark of te42kyfo/gpu-benches (D. Ernst, NHR@FAU;
  https://github.com/te42kyfo/gpu-benches, result files ``gpu-l2-cache/<gpu>.txt``: thread
  blocks read a data set that fits in L2 over and over; the value is the plateau of its
  "Eff. bw" column for data sets of a few MB up to the L2 size, before it drops to DRAM speed):
  A100 80 GB SXM 5.4 TB/s (``a100_80.txt``: 5.3-5.5 TB/s for 2-25 MB); A100 40 GB: the same
  figure, *derived* (same GA100, 108 SMs, 1,410 MHz boost and 40 MB L2 per the A100 whitepaper;
  only the HBM differs; NVIDIA's own figure, 5,120 B/clk x 1.41 GHz = 7.2 TB/s, is the
  theoretical peak of the same L2); H200 9.8 TB/s (``h200.txt``: 9.7-10.1 TB/s for 8-40 MB);
  H100 SXM5: the H200 figure, *derived* (same GH100 with 132 SMs and 50 MB L2 at the same
  1,980 MHz boost, 700 W; the H200 differs in its HBM3e: H100 whitepaper, H200 datasheet,
  clocks as listed at https://glennklockwood.com/garden/processors/h100 and
  https://hmc-tech.com/gpu/nvidia-h100-vs-nvidia-h200-sxm-vs-nvidia-gb200); H100 PCIe 6.9 TB/s (``h100_pcie.txt``:
  6.8-7.0 TB/s for 7-33 MB; 114 SMs, 1,755 MHz, 350 W); L40S: the L40's 5.2 TB/s
  (``l40.txt``: 5.1-5.3 TB/s for 2-90 MB), *derived* (same AD102 with 142 SMs and 96 MB L2;
  boost clock 2,490 MHz for the L40 and 2,520 MHz for the L40S, 1.2% apart, not scaled; as
  listed at https://pcpartdb.com/gpus/compare/nvidia-l40--vs--nvidia-l40s); A40
  2.4 TB/s (``gpu-cache/a40.txt``, the all-blocks-read-one-buffer variant: 2.3-2.45 TB/s for
  0.3-6 MB at 1,725-1,740 MHz). RTX 4090, RTX PRO 6000 and B200: no figure from that source,
  left 0 (= unknown: a warm row is priced at the cold rate; none of them has warm rows).
* Die (``die``, the silicon a product is cut from; a GPU without measurements takes the
  coefficients of a measured GPU of the same die, whose clock, bandwidth and SM differences are
  already in these spec numbers): A100 40/80 GB GA100 (A100 architecture whitepaper), H100
  SXM5 / PCIe and H200 GH100 (H100 architecture whitepaper; H200 datasheet: the same Hopper
  GPU with HBM3e), B200 GB100 (Blackwell architecture technical brief: two reticle-sized
  dies), L40S and RTX 4090 AD102 (Ada Lovelace architecture whitepaper; L40S datasheet), A40
  GA102 (A40 datasheet / Ampere GA102 whitepaper), RTX PRO 6000 Blackwell GB202 (RTX
  Blackwell GPU architecture whitepaper).
* Flash-attention generation (``flash_attn``): vLLM's flash-attention backend runs FA3 on
  compute capability 9.0 (Hopper: H100, H200) and FA2 elsewhere (Ampere, Ada, RTX Blackwell;
  ``get_flash_attn_version`` in vLLM: FA3 needs sm90). The two differ in how decode is split
  (FA2 splits the keys only for grouped-query decode and packs the group by transposing q and
  the output; FA3 packs the group in the kernel and splits any layout), which the decode model
  prices (``StepCostModel.decode_fixed`` / ``decode_slope``). B200 is left at 2: which backend
  vLLM picks there is not measured here.
* cpu: a rough figure for the torch engine on a small shared x86 host (a few AVX2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.errors import unknown_name

GiB = 1024**3


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """Peak numbers of one device. Bandwidths in bytes/s, FLOP/s dense."""

    name: str
    flops_bf16: float
    flops_fp8: float  # 0 where the device has no FP8 tensor cores
    mem_bw: float  # device memory bandwidth
    mem_bytes: int  # total device memory as the driver reports it
    link_bw: float  # GPU<->GPU bandwidth per direction (NVLink, else PCIe)
    host_bw: float  # GPU<->host copy bandwidth (swap)
    nvlink: bool
    arch: str  # "ampere", "ada", "hopper", "blackwell", "cpu"
    sms: int = 1  # streaming multiprocessors (thread blocks run in waves of ``sms``)
    l2_bytes: int = 0  # last-level cache; benchmark pricing only (the runtime reads cold)
    l2_bw: float = 0.0  # measured L2 read bandwidth, bytes/s; benchmark pricing only; 0 = unknown
    die: str = ""  # silicon (GA100, GH100, AD102, ...): which measured GPU's coefficients transfer
    flash_attn: int = 2  # flash-attention generation vLLM runs here (3 on Hopper, else 2)


def _gib(x: float) -> int:
    return int(x * GiB)


def _mb(x: float) -> int:
    return int(x * 1024**2)


GPUS: dict[str, GPUSpec] = {
    "a100-40g": GPUSpec("a100-40g", 312e12, 0.0, 1.555e12, _gib(39.4), 300e9, 25e9, True, "ampere", 108,
                        _mb(40), die="GA100", l2_bw=5.4e12),
    "a100-80g": GPUSpec("a100-80g", 312e12, 0.0, 2.039e12, _gib(79.15), 300e9, 25e9, True, "ampere", 108,
                        _mb(40), die="GA100", l2_bw=5.4e12),
    "h100": GPUSpec("h100", 989.5e12, 1979e12, 3.35e12, _gib(79.19), 450e9, 50e9, True, "hopper", 132,
                    _mb(50), die="GH100", flash_attn=3, l2_bw=9.8e12),
    "h100-pcie": GPUSpec("h100-pcie", 756e12, 1513e12, 2.0e12, _gib(79.19), 300e9, 50e9, True, "hopper", 114,
                         _mb(50), die="GH100", flash_attn=3, l2_bw=6.9e12),
    "h200": GPUSpec("h200", 989.5e12, 1979e12, 4.8e12, _gib(139.8), 450e9, 50e9, True, "hopper", 132,
                    _mb(50), die="GH100", flash_attn=3, l2_bw=9.8e12),
    "b200": GPUSpec("b200", 2250e12, 4500e12, 7.7e12, _gib(178.4), 900e9, 50e9, True, "blackwell", 148,
                    die="GB100"),
    "l40s": GPUSpec("l40s", 362e12, 733e12, 0.864e12, _gib(44.4), 25e9, 25e9, False, "ada", 142, _mb(96),
                    die="AD102", l2_bw=5.2e12),
    "a40": GPUSpec("a40", 149.7e12, 0.0, 0.696e12, _gib(44.4), 56e9, 25e9, True, "ampere", 84, _mb(6),
                   die="GA102", l2_bw=2.4e12),
    "rtx-4090": GPUSpec("rtx-4090", 165.2e12, 330.3e12, 1.008e12, 25_250_627_584, 25e9, 25e9, False, "ada", 128,
                        _mb(72), die="AD102"),
    "rtx-pro-6000": GPUSpec("rtx-pro-6000", 503.8e12, 1007.6e12, 1.792e12, _gib(94.97), 50e9, 50e9, False,
                            "blackwell", 188, _mb(128), die="GB202"),
    "cpu": GPUSpec("cpu", 0.2e12, 0.0, 20e9, _gib(16), 10e9, 10e9, False, "cpu", 8, die="cpu"),
}

ALIASES: dict[str, str] = {
    "h100-sxm": "h100", "h100_sxm": "h100", "h100-80g": "h100", "a100": "a100-80g",
    "a100_sxm": "a100-80g", "a100-sxm": "a100-80g", "a100-80": "a100-80g", "rtx4090": "rtx-4090",
    "rtxpro6000": "rtx-pro-6000", "rtx-pro-6000-blackwell": "rtx-pro-6000",
}


def get_gpu(name: str) -> GPUSpec:
    """Spec by short name (case-insensitive); unknown names list the valid ones."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in GPUS:
        raise unknown_name("GPU", name, list(GPUS))
    return GPUS[key]
