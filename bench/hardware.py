"""Hardware use: training FLOP/s of the 23M model against this CPU's measured matrix multiply rates.

    python bench/hardware.py                      # 1 thread, 5 repetitions
    python bench/hardware.py --threads 2 --repeats 3
    python bench/hardware.py --repeats 0 --loss-steps 200   # only the fp32/bf16 loss comparison

In one run, alternating, each repetition measures: a large fp32 matmul, the same matmul in bf16, and training
steps (forward, backward, AdamW) of the 23M-parameter model in fp32 and under bf16 autocast. Training FLOPs per
step are 6 x parameters x tokens (parameters without the position table, so the tied output projection counts
once) plus the attention scores, 12 x n_layer x n_embd x seq_len per token (forward and backward of QK^T and AV).
The ratio training/fp32-matmul is the share of the CPU's matrix rate that training achieves.
Also measured: fp32 and bf16 matmuls of the shapes one training step runs, so a gap can be traced to them.
Rates are given per CPU second of this process (robust to other processes sharing the cores) and per wall second.

With ``--loss-steps N``, two copies of the 23M model with the same initialization train side by side on the
benchmark corpus (``bench/corpus.py``), one in fp32 and one under bf16 autocast, with the peer's AdamW settings,
warm-up, gradient clipping and the same batches, one step of each in turn. Both are validated in fp32 on the same
validation windows every ``--loss-every`` steps, and the CPU seconds of each side are summed.
"""

import argparse
import sys

import torch
from common import median, print_machine, print_table, timer

from cellmind.model import GPT, GPTConfig

EVAL_BATCHES = 8

MATMUL_SIZE = 2048
VOCAB_SIZE = 8000


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, calls: int) -> tuple[float, float]:
    """FLOP per wall second and per CPU second of ``calls`` products of (m, k) and (k, n) matrices of ``dtype``."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: oneDNN picks its kernel on the first call
    with timer() as elapsed:
        for _ in range(calls):
            a @ b
    flops = 2 * m * k * n * calls
    return flops / elapsed.wall, flops / elapsed.cpu


def training_flops_per_token(model: GPT, seq_len: int) -> int:
    config = model.config
    return 6 * model.num_parameters(exclude_embeddings=True) + 12 * config.n_layer * config.n_embd * seq_len


class Trainer:
    """The 23M model with AdamW, stepping on random tokens in fp32 or under bf16 autocast."""

    def __init__(self, batch_size: int, seq_len: int):
        torch.manual_seed(0)
        self.model = GPT(GPTConfig(vocab_size=VOCAB_SIZE, block_size=seq_len))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        self.x = torch.randint(VOCAB_SIZE, (batch_size, seq_len))
        self.y = torch.randint(VOCAB_SIZE, (batch_size, seq_len))
        self.tokens = batch_size * seq_len

    def step(self, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = self.model(self.x, self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def rate(self, bf16: bool, steps: int) -> tuple[float, float]:
        """Training FLOP per wall second and per CPU second over ``steps`` steps after one warm-up step."""
        self.step(bf16)
        with timer() as elapsed:
            for _ in range(steps):
                self.step(bf16)
        flops = training_flops_per_token(self.model, self.x.size(1)) * self.tokens * steps
        return flops / elapsed.wall, flops / elapsed.cpu


class CorpusTrainer:
    """The 23M model trained on the benchmark corpus as a peer trains it, in fp32 or under bf16 autocast."""

    def __init__(self, config, vocab_size: int, bf16: bool):
        from cellmind.peer import new_model, optimizer_factory, parameter_groups, scheduler_factory

        self.config, self.bf16 = config, bf16
        self.model = new_model(config, vocab_size)
        self.optimizer = optimizer_factory(config)(parameter_groups(self.model, config.training.weight_decay))
        self.scheduler = scheduler_factory(config)(self.optimizer)
        self.cpu_seconds = 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with timer() as elapsed:
            self.model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                _, loss = self.model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.training.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        self.cpu_seconds += elapsed.cpu
        return loss.item()

    @torch.no_grad()
    def validation_loss(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Return the mean fp32 loss over ``batches``, so that both sides are judged the same way."""
        self.model.eval()
        return sum(self.model(x, y)[1].item() for x, y in batches) / len(batches)


def compare_losses(args) -> None:
    """Train fp32 and bf16 autocast copies of the 23M model side by side on the corpus; print their losses."""
    from corpus import ensure_corpus

    from cellmind.config import Config
    from cellmind.dataset import TokenWindows, ensure_token_file, iter_eval_batches
    from cellmind.tokenizer import load_tokenizer

    paths = ensure_corpus()
    tokenizer = load_tokenizer(paths.tokenizer)
    config = Config()
    config.training.seq_len = args.seq_len
    windows = TokenWindows(ensure_token_file(paths.train, tokenizer, show_progress=False), args.seq_len, seed=0)
    validation = list(iter_eval_batches(ensure_token_file(paths.val, tokenizer, show_progress=False), args.seq_len,
                                        args.batch_size, EVAL_BATCHES))
    sides = {"fp32": CorpusTrainer(config, tokenizer.vocab_size, bf16=False),
             "bf16 autocast": CorpusTrainer(config, tokenizer.vocab_size, bf16=True)}
    train_losses = {name: [] for name in sides}
    rows = []
    for step in range(1, args.loss_steps + 1):
        x, y = windows.get_batch(args.batch_size)
        for name, side in sides.items():
            train_losses[name].append(side.step(x, y))
        if step % args.loss_every == 0 or step == args.loss_steps:
            fp32, bf16 = (side.validation_loss(validation) for side in sides.values())
            recent = {name: sum(losses[-args.loss_every:]) / len(losses[-args.loss_every:])
                      for name, losses in train_losses.items()}
            rows.append([step, recent["fp32"], recent["bf16 autocast"], fp32, bf16, bf16 - fp32])
            print(f"step {step}: validation fp32 {fp32:.4f}, bf16 autocast {bf16:.4f}", flush=True)
    print(f"corpus {paths.train}: {args.loss_steps} AdamW steps of {args.batch_size} x {args.seq_len} tokens, "
          f"lr {config.training.lr:g} after {config.training.warmup_steps} warm-up steps, same batches for both; "
          f"validation on {len(validation)} batches, in fp32")
    print_table(["step", "train loss fp32 (mean since last row)", "train loss bf16", "validation fp32",
                 "validation bf16", "bf16 - fp32"], rows)
    fp32_cpu, bf16_cpu = (side.cpu_seconds for side in sides.values())
    print(f"CPU seconds of training: fp32 {fp32_cpu:.0f}, bf16 autocast {bf16_cpu:.0f} "
          f"(fp32 / bf16: {fp32_cpu / bf16_cpu:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per repetition and precision")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--loss-steps", type=int, default=0,
                        help="also train fp32 and bf16 autocast side by side on the corpus for this many steps")
    parser.add_argument("--loss-every", type=int, default=50, help="steps between validation losses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine("Hardware use: training FLOP/s against matmul FLOP/s", threads=str(torch.get_num_threads()))
    if args.repeats > 0:
        measure_rates(args)
    if args.loss_steps > 0:
        compare_losses(args)
    return 0


def measure_rates(args) -> None:
    """Print the matmul and training rates in fp32 and bf16, alternating, and the bf16/fp32 training ratio."""

    trainer = Trainer(args.batch_size, args.seq_len)
    tokens = args.batch_size * args.seq_len
    C = trainer.model.config.n_embd
    shapes = {  # (m, k, n) of the forward matmuls of one step
        "qkv": (tokens, C, 3 * C), "mlp up": (tokens, C, 4 * C), "mlp down": (tokens, 4 * C, C),
        "lm_head": (tokens, C, VOCAB_SIZE),
    }
    size = MATMUL_SIZE
    measurements = [
        ("matmul fp32", lambda: matmul_rate(size, size, size, torch.float32, 4)),
        ("matmul bf16", lambda: matmul_rate(size, size, size, torch.bfloat16, 4)),
        ("train fp32", lambda: trainer.rate(False, args.steps)),
        ("train bf16 autocast", lambda: trainer.rate(True, args.steps)),
    ]
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        measurements += [(f"{dtype_name} {shape} {m}x{k}x{n}", lambda m=m, k=k, n=n, dtype=dtype:
                          matmul_rate(m, k, n, dtype, 4)) for shape, (m, k, n) in shapes.items()]
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _repeat in range(args.repeats):
        for name, measure in measurements:
            per_wall, per_cpu = measure()
            wall.setdefault(name, []).append(per_wall)
            cpu.setdefault(name, []).append(per_cpu)

    print(f"model: {trainer.model.num_parameters():,} parameters, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{training_flops_per_token(trainer.model, args.seq_len) / 1e6:.1f} MFLOP per token; "
          f"{args.repeats} repetitions of {args.steps} steps; matmul {MATMUL_SIZE}x{MATMUL_SIZE}")
    fp32_cpu, fp32_wall = median(cpu["matmul fp32"]), median(wall["matmul fp32"])
    rows = [[name, median(cpu[name]) / 1e9, median(cpu[name]) / fp32_cpu, median(wall[name]) / 1e9,
             median(wall[name]) / fp32_wall] for name, _measure in measurements]
    print_table(["measurement", "GFLOP per CPU-s", "/ fp32 matmul", "GFLOP per wall-s", "/ fp32 matmul"], rows)
    for clock, rates in (("CPU", cpu), ("wall", wall)):
        speedup = median(rates["train bf16 autocast"]) / median(rates["train fp32"])
        print(f"bf16 autocast training / fp32 training ({clock} time): {speedup:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
