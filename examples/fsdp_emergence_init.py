"""The emergence init for a model that does not fit one device: plan on the meta device, shard
with FSDP2, allocate only the shards, then draw every tensor (whole per parameter, each rank
keeping its part), so the sharded model holds exactly the weights an unsharded init with the same
seed would.

    torchrun --standalone --nproc-per-node 2 examples/fsdp_emergence_init.py --check      # CPU, gloo
    torchrun --standalone --nproc-per-node 8 examples/fsdp_emergence_init.py --dim 4096 --layers 32

A small Llama-style decoder (RMSNorm, causal attention, SwiGLU MLP) stands in for your model. With
``--check`` every rank also builds the model unsharded on its CPU and compares (small sizes only).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import emergeinit as ei
from emergeinit.distributed import reset_unplanned_


class MLP(nn.Module):
    """SwiGLU feed-forward block: the unit the blockwise schedule runs inside."""

    emergeinit_block = True  # scope="blockwise" schedules gate, up, down inside each of these

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.qkv = nn.ModuleDict({k: nn.Linear(dim, dim, bias=False) for k in ("q", "k", "v", "o")})
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (self.qkv[n](h).view(b, t, self.heads, -1).transpose(1, 2) for n in ("q", "k", "v"))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.qkv["o"](a)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build_initialized(args: argparse.Namespace, device: torch.device, shard: bool) -> nn.Module:
    """The recipe. Nothing but the shards is ever allocated on ``device``."""
    with torch.device("meta"):  # 1. the model, without memory
        model = Decoder(args.vocab, args.dim, args.layers, args.heads, 4 * args.dim)
    example = torch.zeros(1, 8, dtype=torch.long)
    plan = ei.plan_emergence(model, alpha=args.alpha, schedule=args.schedule, scope="blockwise",
                             example_input=example)  # 2. the plan, traced on meta tensors
    if shard:  # 3. shard on meta: each block, then the rest (embedding, final norm, head)
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    model.to_empty(device=device)  # 4. allocate the shards only
    torch.manual_seed(args.seed)  # 5. the same random state on every rank
    reset_unplanned_(model, plan)  # norms and embedding: their modules' own init
    ei.apply_plan_(model, plan, base="kaiming")  # every planned weight: Kaiming × α^e_k, one draw
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=257)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--schedule", default="normalized")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare with an unsharded init on each rank's CPU")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    model = build_initialized(args, device, shard=True)
    seconds = time.perf_counter() - t0
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"rank {rank}/{world}: {local:,} of {total:,} parameters here; materialized and initialized in {seconds:.2f} s")

    if args.check:
        reference = dict(build_initialized(args, torch.device("cpu"), shard=False).named_parameters())
        differ = [k for k, p in model.named_parameters()
                  if not torch.equal(p.full_tensor().cpu(), reference[k].detach())]
        print(f"rank {rank}: gathered weights equal the unsharded init: {len(differ)} of {len(reference)} differ"
              + (f" ({', '.join(differ)})" if differ else ""))

    tokens = torch.randint(0, args.vocab, (2, 16), generator=torch.Generator().manual_seed(rank)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    print(f"rank {rank}: one training step, loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
