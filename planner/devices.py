"""The catalog: device kinds and link kinds, every figure with its source.

Peak FLOP/s are dense (no structured sparsity), per dtype: every GPU kind states its fp32,
tf32, bf16 and fp16 peaks, or says why it has none (the V100 has no bf16 tensor cores).
Link bandwidths are per direction, in bytes/s; latencies are order-of-magnitude figures
for a small message through the collective library, to be replaced by a measured profile
(`runtime profile`) where one exists. GPU memory is the datasheet's GB taken as GiB, which
is what the driver reports to within a few percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import ClusterError

GiB = 1024**3
GB = 10**9
TFLOPS = 10**12


@dataclass(frozen=True)
class DeviceKind:
    id: str
    name: str
    memory_bytes: int | None
    """None for `cpu`: a CPU rank's memory is its share of the host's RAM (detected)."""
    memory_bandwidth: float
    """Bytes/s."""
    peak_flops: dict[str, float]
    """Dense peak FLOP/s per dtype ('float32', 'tf32', 'bfloat16', 'float16')."""
    intra_node_link: str
    """Link kind between two devices of this kind in one node."""
    host_link: str
    """Link kind to the host bus, used between different kinds in one node."""
    inter_node_link: str
    """Link kind between nodes."""
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkKind:
    id: str
    name: str
    bandwidth: float
    """Bytes/s per direction."""
    latency: float
    """Seconds."""
    source: str


_H100 = "NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (sparsity figures halved)"
_H200 = (
    "NVIDIA H200 Tensor Core GPU datasheet, SXM column: 141 GB HBM3e, 4.8 TB/s, "
    "BF16/FP16 1,979 TFLOPS and TF32 989 TFLOPS with sparsity (halved here), FP32 67 TFLOPS"
)
_A100 = "NVIDIA A100 Tensor Core GPU datasheet, SXM4 column (sparsity figures halved)"
_V100 = "NVIDIA Tesla V100 datasheet, SXM2 column"
_V100_PEAKS = (
    f"{_V100}; Volta has no TF32 (fp32 matrix products run at the fp32 rate) and no bf16 "
    "tensor cores (bf16 plans are refused: use fp16-mixed)"
)
_L4 = "NVIDIA L4 Tensor Core GPU datasheet (sparsity figures halved)"
_ADA = "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 (FP16/BF16 with FP32 accumulate)"
_CPU = (
    "nominal for one x86-64 core: 2 FMA units x 8 fp32 lanes (AVX2) x 2 FLOP x 3.0 GHz; "
    "real throughput is far lower, measure it with `python -m runtime profile`"
)


def _gpu_sources(sheet: str) -> dict[str, str]:
    return {"memory_bytes": sheet, "memory_bandwidth": sheet, "peak_flops": sheet}


DEVICE_KINDS: dict[str, DeviceKind] = {
    k.id: k
    for k in [
        DeviceKind(
            "h100-80gb",
            "NVIDIA H100 80GB SXM5",
            80 * GiB,
            3.35e12,
            {
                "float32": 67 * TFLOPS,
                "tf32": 494.5 * TFLOPS,
                "bfloat16": 989.5 * TFLOPS,
                "float16": 989.5 * TFLOPS,
            },
            "nvlink4",
            "pcie5",
            "infiniband-ndr",
            _gpu_sources(_H100),
        ),
        DeviceKind(
            "a100-40gb",
            "NVIDIA A100 40GB SXM4",
            40 * GiB,
            1.555e12,
            {
                "float32": 19.5 * TFLOPS,
                "tf32": 156 * TFLOPS,
                "bfloat16": 312 * TFLOPS,
                "float16": 312 * TFLOPS,
            },
            "nvlink3",
            "pcie4",
            "infiniband-hdr",
            _gpu_sources(_A100),
        ),
        DeviceKind(
            "a100-80gb",
            "NVIDIA A100 80GB SXM4",
            80 * GiB,
            2.039e12,
            {
                "float32": 19.5 * TFLOPS,
                "tf32": 156 * TFLOPS,
                "bfloat16": 312 * TFLOPS,
                "float16": 312 * TFLOPS,
            },
            "nvlink3",
            "pcie4",
            "infiniband-hdr",
            _gpu_sources(_A100),
        ),
        DeviceKind(
            "v100-16gb",
            "NVIDIA V100 16GB SXM2",
            16 * GiB,
            900e9,
            {"float32": 15.7 * TFLOPS, "tf32": 15.7 * TFLOPS, "float16": 125 * TFLOPS},
            "nvlink2",
            "pcie3",
            "infiniband-hdr",
            {**_gpu_sources(_V100), "peak_flops": _V100_PEAKS},
        ),
        DeviceKind(
            "v100-32gb",
            "NVIDIA V100 32GB SXM2",
            32 * GiB,
            900e9,
            {"float32": 15.7 * TFLOPS, "tf32": 15.7 * TFLOPS, "float16": 125 * TFLOPS},
            "nvlink2",
            "pcie3",
            "infiniband-hdr",
            {**_gpu_sources(_V100), "peak_flops": _V100_PEAKS},
        ),
        DeviceKind(
            "l4",
            "NVIDIA L4 24GB",
            24 * GiB,
            300e9,
            {
                "float32": 30.3 * TFLOPS,
                "tf32": 60 * TFLOPS,
                "bfloat16": 121 * TFLOPS,
                "float16": 121 * TFLOPS,
            },
            "pcie4",
            "pcie4",
            "ethernet-100g",
            _gpu_sources(_L4),
        ),
        DeviceKind(
            "rtx4090",
            "NVIDIA GeForce RTX 4090 24GB",
            24 * GiB,
            1.008e12,
            {
                "float32": 82.6 * TFLOPS,
                "tf32": 82.6 * TFLOPS,
                "bfloat16": 165.2 * TFLOPS,
                "float16": 165.2 * TFLOPS,
            },
            "pcie4",
            "pcie4",
            "ethernet-100g",
            _gpu_sources(_ADA),
        ),
        DeviceKind(
            "cpu",
            "CPU rank (one core)",
            None,
            10e9,
            {"float32": 96e9, "bfloat16": 96e9},
            "loopback",
            "loopback",
            "ethernet-10g",
            {
                "memory_bytes": "detected: the host's RAM divided among its CPU ranks",
                "memory_bandwidth": "nominal share of one core of DDR4 bandwidth; measure it",
                "peak_flops": _CPU,
            },
        ),
        DeviceKind(
            "h200",
            "NVIDIA H200 141GB SXM",
            141 * GiB,
            4.8e12,
            {
                "float32": 67 * TFLOPS,
                "tf32": 494.5 * TFLOPS,
                "bfloat16": 989.5 * TFLOPS,
                "float16": 989.5 * TFLOPS,
            },
            "nvlink4",
            "pcie5",
            "infiniband-ndr",
            _gpu_sources(_H200),
        ),
    ]
}

ALIASES = {"h100": "h100-80gb"}

LINK_KINDS: dict[str, LinkKind] = {
    k.id: k
    for k in [
        LinkKind(
            "nvlink4",
            "NVLink 4 (H100)",
            450 * GB,
            3e-6,
            "NVIDIA H100 datasheet: 900 GB/s NVLink per GPU, both directions",
        ),
        LinkKind(
            "nvlink3",
            "NVLink 3 (A100)",
            300 * GB,
            3e-6,
            "NVIDIA A100 datasheet: 600 GB/s NVLink per GPU, both directions",
        ),
        LinkKind(
            "nvlink2",
            "NVLink 2 (V100)",
            150 * GB,
            4e-6,
            "NVIDIA V100 datasheet: 300 GB/s NVLink per GPU, both directions",
        ),
        LinkKind("pcie5", "PCIe 5.0 x16", 63 * GB, 5e-6, "PCI-SIG: 32 GT/s x 16 lanes, 128b/130b"),
        LinkKind("pcie4", "PCIe 4.0 x16", 31.5 * GB, 5e-6, "PCI-SIG: 16 GT/s x 16 lanes, 128b/130b"),
        LinkKind("pcie3", "PCIe 3.0 x16", 15.75 * GB, 5e-6, "PCI-SIG: 8 GT/s x 16 lanes, 128b/130b"),
        LinkKind(
            "infiniband-ndr",
            "InfiniBand NDR 400 Gb/s (one port per GPU)",
            50 * GB,
            5e-6,
            "InfiniBand Trade Association: NDR 4x = 400 Gb/s",
        ),
        LinkKind(
            "infiniband-hdr",
            "InfiniBand HDR 200 Gb/s (one port per GPU)",
            25 * GB,
            5e-6,
            "InfiniBand Trade Association: HDR 4x = 200 Gb/s",
        ),
        LinkKind("ethernet-100g", "100 Gb Ethernet", 12.5 * GB, 20e-6, "IEEE 802.3: 100 Gb/s"),
        LinkKind("ethernet-10g", "10 Gb Ethernet", 1.25 * GB, 50e-6, "IEEE 802.3: 10 Gb/s"),
        LinkKind(
            "loopback",
            "TCP over loopback (gloo, one host)",
            2 * GB,
            30e-6,
            "nominal for gloo over loopback on one host; measure it with `python -m runtime profile`",
        ),
    ]
}


def device_kind(kind_id: str) -> DeviceKind:
    """Look up a device kind; a bare ambiguous id (``a100``) names its choices.

    >>> device_kind("h100").id
    'h100-80gb'
    >>> device_kind("a100")
    Traceback (most recent call last):
    ...
    planner.errors.ClusterError: device kind 'a100' is ambiguous: a100-40gb, a100-80gb
    """
    key = ALIASES.get(kind_id, kind_id)
    if key in DEVICE_KINDS:
        return DEVICE_KINDS[key]
    choices = sorted(k for k in DEVICE_KINDS if k.startswith(f"{kind_id}-"))
    if choices:
        raise ClusterError(f"device kind {kind_id!r} is ambiguous: {', '.join(choices)}")
    raise ClusterError(f"unknown device kind {kind_id!r}; known: {', '.join([*DEVICE_KINDS, *ALIASES])}")


def link_kind(link_id: str) -> LinkKind:
    if link_id not in LINK_KINDS:
        raise ClusterError(f"unknown link kind {link_id!r}; known: {', '.join(LINK_KINDS)}")
    return LINK_KINDS[link_id]


_SLOWEST_FIRST = sorted(LINK_KINDS, key=lambda k: LINK_KINDS[k].bandwidth)


def slower_link(a: str, b: str) -> str:
    """The slower of two link kinds: what two different devices can both use."""
    return a if _SLOWEST_FIRST.index(a) <= _SLOWEST_FIRST.index(b) else b
