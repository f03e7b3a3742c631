"""Cost formulas of the pre-flight plan (:mod:`lmm.training.plan`): GPU peaks and bandwidths, the model's shape, FLOPs
and memory-bound traffic per sample, memory per GPU. Pure arithmetic on a :class:`ModelShape` read from a
(meta-device) :class:`~lmm.models.llava.LlavaModel`.

Notation: ``N`` LLM parameters that take part in matmuls (all but the input-embedding lookup; the output head
counts), ``L`` layers, ``h`` width, ``h_kv`` = KV heads × head dim, ``i`` MLP width, ``V`` vocabulary, ``T`` LLM
sequence length of a sample (text + image tokens, ≤ ``model.max_length``), ``b`` micro batch, ``W`` world size,
``P_t`` / ``P_f`` trainable / frozen parameter counts.

**FLOPs** (a multiply-add = 2 FLOPs; Kaplan et al. 2020, Narayanan et al. 2021, PaLM App. B), per sample:

* LLM forward ``2·(N − V·h)·T + 2·V·h·T_y`` + attention ``4·L·h·T²`` (QKᵀ and AV, counted in full as Megatron /
  PaLM do, though a causal flash kernel skips about half). ``T_y``: the positions the LM head runs at — training
  computes logits at the labelled positions only (``LlavaModel.forward(logits="labelled")``), so ``T_y`` is the
  sample's label count; ``T_y = T`` for the full path (every position's logits);
* LLM backward ``4·(N − V·h)·T + 4·V·h·T_y`` when the LLM trains (input and weight gradients), half that when it is
  frozen (input gradients only — still needed to reach the connector: stage 1), attention backward ``8·L·h·T²``
  either way;
* LoRA adapters (``N_lora``) as a trained LLM: ``2·N_lora·T`` forward, ``4·N_lora·T`` backward;
* activation checkpointing recomputes every decoder layer's forward in backward: ``2·(N − V·h)·T + 4·L·h·T²``
  (+ ``2·N_lora·T``). *Model* FLOPs (MFU, PaLM's definition) exclude it; *executed* FLOPs include it;
* vision tower, frozen: forward only, ``2·N_v·T_v + 4·L_v·d_v·T_v²`` per view (``T_v`` positions incl. CLS; every
  layer runs although layer −2 is read); HD: up to ``max_cells + 1`` views per image;
* connector: ``2·N_c·T_v`` forward (+ ``4·N_c·T_v`` backward when it trains) per view — exact for the token-wise
  linear / MLP connectors, an upper bound for a Q-Former.

**Memory-bound traffic** (bytes moved to and from HBM by the non-matmul ops — RMSNorms with their fp32 upcasts,
rotary, SwiGLU, residual adds and their gradients — which bandwidth, not FLOPs, limits), per token per decoder layer:
forward ``139·h + 20·h_kv + 10·i``, backward ``351·h + 32·h_kv + 18·i``; activation checkpointing repeats the forward.
Coefficients measured on transformers' ``LlamaDecoderLayer`` under bf16 autocast (every non-matmul aten op's inputs
and outputs, views excluded; tests/training/test_plan_clock.py). The frozen vision tower's forward is charged the
forward coefficients at its own width. Not counted: the loss over the labels' logits and the splice (< 1 %).

**Memory per GPU** (bytes; precision as :mod:`lmm.training.precision`: trainable weights are fp32 masters with fp32
AdamW moments, frozen parts stay in the dtype they load in, bf16 compute):

* replicated (``auto`` / ``ddp``): weights ``4·P_t`` (fp32 masters) + ``2·P_t`` (bf16 autocast copies held for
  backward) + frozen as stored; gradients ``4·P_t``; AdamW ``8·P_t``;
* DeepSpeed bf16 (ZeRO paper, Rajbhandari et al. 2020, K = 12): bf16 weights ``2·(P_t+P_f)``, bf16 gradients
  ``2·P_t``, fp32 master + two moments ``12·P_t``; ZeRO-1 shards the 12, ZeRO-2 also the gradients, ZeRO-3 also
  the weights (frozen ones included) and gathers two units at a time in bf16; CPU offload removes what it offloads;
* FSDP (FSDP2 ``fully_shard``, this project's ``conf/strategy/fsdp.yaml``): fp32 masters, frozen weights, fp32
  gradients and AdamW all sharded ``/W``; two gathered units in bf16 with ``reshard_after_forward``, else every
  gathered weight in bf16 from forward to backward;
* activations (Korthikanti et al. 2022, §4, counted for Llama — SwiGLU MLP, grouped KV, no dropout — with
  flash / SDPA attention, so no ``T²`` term): bytes saved per token per layer ``a = 26·h + 4·h_kv + 8·i``. The
  ideal count is ``12·h + 4·h_kv + 8·i`` (bf16 norm inputs, Q/K/V, attention output, MLP input, gate / up / SiLU /
  product); transformers' ``LlamaDecoderLayer`` under bf16 autocast also keeps its RMSNorms' fp32 upcasts and a few
  bf16 copies, ``14·h`` more — coefficients measured with ``saved_tensors_hooks`` (tests/training/test_plan.py). Without
  checkpointing ``L·b·T·a``; with it the layer inputs ``L·b·T·2h`` plus one layer recomputed ``b·T·a``;
  LoRA adds ``2·(6h + i) + 14·r`` per token per layer (dropout outputs and A outputs of the 7 adapted linears);
  + ``6·b·T·h`` (spliced embeddings, final norm). For a frozen LLM this is an upper bound (a frozen linear saves
  no input);
* logits ``10·b·T_y·V``: bf16 logits, their fp32 upcast for the loss and the fp32 log-softmax saved by the
  cross-entropy (the backward holds the same amount), at the ``T_y`` positions the head runs at (the labels on the
  training path, evaluated at the stage's peak label count; ``T`` on the full path);
* vision (no grad, transient): ``(L_v+1)·b·views·T_v·d_v·2`` (``output_hidden_states`` keeps every layer's output);
  connector ``2·b·views·T_v·(d_v + 2·H)``; + a fixed overhead (CUDA context, NCCL buffers, fragmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3


class PlanError(ValueError):
    """A stage cannot run as configured (it does not fit the GPU, or its batch sizes do not divide), or a ``preflight``
    assumption is wrong: one line naming the key and the fix (``train.py`` prints it, exit status 2)."""


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float   # dense bf16 tensor-core peak, TFLOP/s
    memory_gib: float
    hbm_tbps: float = 2.0      # memory bandwidth, TB/s
    link_gbps: float = 225.0   # collective (bus) bandwidth per GPU within a node, GB/s


# Vendor data sheets (dense, no sparsity; HBM bandwidth of the SXM parts). Memory as the cards report it (nvidia-smi:
# A100 40 / 80 GiB, H100 80 GiB, H200 "141 GB" = 143,771 MiB ≈ 140 GiB). Collective bandwidth: ≈ 3/4 of NVLink's
# one-way bandwidth (A100: 300 GB/s, H100 / H200: 450 GB/s), about what nccl-tests' all-gather / reduce-scatter
# "busbw" reaches on an 8-GPU node — a rough figure (lmm.training.plan_time).
GPUS = {
    "a100_40g": GPU("NVIDIA A100 40GB", 312.0, 40.0, 1.555, 225.0),
    "a100_80g": GPU("NVIDIA A100 80GB", 312.0, 80.0, 2.039, 225.0),
    "h100_80g": GPU("NVIDIA H100 SXM 80GB", 989.0, 80.0, 3.35, 340.0),
    "h200": GPU("NVIDIA H200 141GB", 989.0, 140.0, 4.8, 340.0),
}


def gpu_spec(name: str) -> GPU:
    if name not in GPUS:
        raise PlanError(f"preflight.gpu: unknown GPU {name!r}; known: {', '.join(sorted(GPUS))} (set preflight.gpu=<one>)")
    return GPUS[name]


@dataclass(frozen=True)
class ModelShape:
    llm_params: int          # the base LLM (LoRA adapters excluded)
    matmul_params: int       # N: llm_params less the input-embedding lookup (a tied head counts once, as a matmul)
    head_params: int         # V·h
    hidden: int
    layers: int
    kv_hidden: int
    intermediate: int
    vocab: int
    unit_params: int         # the largest unit gathered at once under ZeRO-3 / FSDP (decoder layer, head, tower)
    vision_params: int
    vision_layers: int
    vision_hidden: int
    vision_seq: int          # positions the tower computes per view (patches + CLS)
    connector_params: int
    connector_in: int        # vision tokens the connector reads per view
    image_tokens: int        # tokens one image puts into the LLM (HD: the most one image can yield)
    views_per_image: int     # 1; HD: max_cells + the global view
    vision_intermediate: int = 0   # the tower's MLP width (0: 4 × vision_hidden, as ViTs have)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_shape(model, hd_active: bool | None = None) -> ModelShape:
    """Read the shape the formulas need from a :class:`LlavaModel` (meta or real; before LoRA is added)."""
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    cfg = llm.config
    h, layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    embed, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    total = _count(llm)
    tied = embed is head
    matmul = total - embed.numel() + (head.numel() if tied else 0)
    layer = (total - embed.numel() - (0 if tied else head.numel()) - h) // layers
    v = model.vision
    inner = getattr(v.model, "config", None)
    v_layers = getattr(inner, "num_hidden_layers", None) or len(getattr(v.model, "blocks", []))
    hd = getattr(model, "hd", None)
    hd_on = (hd is not None) if hd_active is None else (hd_active and hd is not None)
    conn = _count(model.connector)
    return ModelShape(
        llm_params=total, matmul_params=matmul, head_params=head.numel(), hidden=h, layers=layers,
        kv_hidden=(getattr(cfg, "num_key_value_heads", None) or heads) * head_dim,
        intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
        unit_params=max(layer, head.numel(), _count(v)), vision_params=_count(v), vision_layers=v_layers,
        vision_hidden=v.hidden_size, vision_seq=v.num_patches + v.num_prefix_tokens, connector_params=conn,
        connector_in=v.num_tokens, image_tokens=hd.max_num_tokens if hd_on else model.num_image_tokens,
        views_per_image=(hd.max_cells + hd.n_global) if hd_on else 1,
        vision_intermediate=int(getattr(inner, "intermediate_size", 0) or 0))


@dataclass(frozen=True)
class Flops:
    model: float      # forward + backward (MFU's numerator)
    executed: float   # + the recomputed forward under activation checkpointing


def sample_flops(s: ModelShape, seq: float, seq_sq: float, image_share: float, *, llm_trains: bool,
                 connector_trains: bool = True, lora_params: int = 0, checkpointing: bool = False,
                 head_tokens: float | None = None) -> Flops:
    """FLOPs of one training sample of mean LLM length ``seq`` (``seq_sq`` = mean of T², for attention), of which a
    share ``image_share`` carries an image (see the module docstring for each term). ``head_tokens``: the mean
    positions the LM head runs at — the labels on training's label-only path; None: every position (full logits)."""
    attn = 4.0 * s.layers * s.hidden * seq_sq
    body = float(s.matmul_params - s.head_params)
    head = float(s.head_params) * (seq if head_tokens is None else min(float(head_tokens), seq))
    fwd = 2.0 * (body * seq + head) + attn + 2.0 * lora_params * seq
    bwd = (4.0 if llm_trains else 2.0) * (body * seq + head) + 2.0 * attn + 4.0 * lora_params * seq
    recompute = 2.0 * body * seq + attn + 2.0 * lora_params * seq
    views = image_share * s.views_per_image
    vision = views * (2.0 * s.vision_params * s.vision_seq
                      + 4.0 * s.vision_layers * s.vision_hidden * s.vision_seq ** 2)
    connector = views * (6.0 if connector_trains else 2.0) * s.connector_params * s.connector_in
    model = fwd + bwd + vision + connector
    return Flops(model, model + (recompute if checkpointing else 0.0))


def layer_traffic_per_token(hidden: int, kv_hidden: int, intermediate: int) -> tuple[float, float]:
    """Bytes the non-matmul ops of one Llama decoder layer move per token: ``(forward, backward)`` (docstring)."""
    return (139.0 * hidden + 20.0 * kv_hidden + 10.0 * intermediate,
            351.0 * hidden + 32.0 * kv_hidden + 18.0 * intermediate)


def sample_traffic(s: ModelShape, seq: float, image_share: float, *, checkpointing: bool) -> float:
    """Memory-bound bytes of one training sample of mean LLM length ``seq`` (module docstring): the LLM's layers
    forward, backward and (with checkpointing) the recomputed forward; the frozen tower's forward per view."""
    fwd, bwd = layer_traffic_per_token(s.hidden, s.kv_hidden, s.intermediate)
    llm = s.layers * seq * ((2.0 if checkpointing else 1.0) * fwd + bwd)
    v_fwd, _ = layer_traffic_per_token(s.vision_hidden, s.vision_hidden, s.vision_intermediate or 4 * s.vision_hidden)
    return llm + image_share * s.views_per_image * s.vision_layers * s.vision_seq * v_fwd


@dataclass(frozen=True)
class Sharding:
    """How a strategy places model states: ``kind`` replicate | zero | fsdp; ``zero_stage`` 0–3 (DeepSpeed);
    ``reshard`` (FSDP's reshard_after_forward); CPU offload of the optimizer / parameters (DeepSpeed)."""

    kind: str
    zero_stage: int = 0
    reshard: bool = True
    offload_optimizer: bool = False
    offload_params: bool = False


def states_bytes(sh: Sharding, world: int, trainable: int, frozen: int, frozen_bytes: float,
                 unit_params: int) -> dict[str, float]:
    """Weights / gradients / optimizer bytes per GPU (module docstring). ``frozen_bytes``: the frozen parameters at
    the dtype they load in (used where they are not cast to bf16)."""
    W, Pt, Pf = world, float(trainable), float(frozen)
    gathered = 2 * 2.0 * unit_params
    if sh.kind == "replicate":
        return {"weights": 6 * Pt + frozen_bytes, "grads": 4 * Pt, "optimizer": 8 * Pt}
    if sh.kind == "fsdp":
        live = gathered if sh.reshard else 2.0 * (Pt + Pf)
        return {"weights": (4 * Pt + frozen_bytes) / W + live, "grads": 4 * Pt / W + gathered / 2,
                "optimizer": 8 * Pt / W}
    if sh.kind != "zero":
        raise ValueError(f"unknown sharding kind {sh.kind!r}")
    z = sh.zero_stage
    weights = 2 * (Pt + Pf) / W + gathered if z >= 3 else 2 * (Pt + Pf)
    if z >= 3 and sh.offload_params:
        weights = gathered
    optimizer = 0.0 if sh.offload_optimizer else (12 * Pt / W if z >= 1 else 12 * Pt)
    return {"weights": weights, "grads": 2 * Pt / W if z >= 2 else 2 * Pt, "optimizer": optimizer}


def layer_bytes_per_token(hidden: int, kv_hidden: int, intermediate: int) -> float:
    """Activation bytes one Llama decoder layer saves per token for backward (bf16 autocast, SDPA; docstring)."""
    return 26.0 * hidden + 4.0 * kv_hidden + 8.0 * intermediate


def activation_bytes(s: ModelShape, micro: int, seq: int, *, checkpointing: bool, lora_r: int = 0,
                     image_share: float = 1.0, label_tokens: float | None = None) -> dict[str, float]:
    """Activation bytes per GPU for a micro batch of ``micro`` samples of ``seq`` tokens (module docstring):
    ``llm`` (as configured), ``llm_no_ckpt`` / ``llm_ckpt`` (both cases), ``logits``, ``vision`` (transient),
    ``connector``. ``label_tokens``: the positions per sample the LM head runs at (training's label-only path);
    None: every position (the full path)."""
    head_positions = float(seq) if label_tokens is None else min(float(label_tokens), float(seq))
    b, T, h = float(micro), float(seq), s.hidden
    per_layer = layer_bytes_per_token(h, s.kv_hidden, s.intermediate)
    if lora_r:
        per_layer += 2 * (6 * h + s.intermediate) + 14 * lora_r
    misc = 6 * b * T * h
    full = s.layers * b * T * per_layer + misc
    ckpt = s.layers * b * T * 2 * h + b * T * per_layer + misc
    views = b * image_share * s.views_per_image
    return {
        "llm": ckpt if checkpointing else full, "llm_no_ckpt": full, "llm_ckpt": ckpt,
        "logits": 10 * b * head_positions * s.vocab,
        "vision": (s.vision_layers + 1) * views * s.vision_seq * s.vision_hidden * 2,
        "connector": 2 * views * s.connector_in * (s.vision_hidden + 2 * s.hidden),
    }
