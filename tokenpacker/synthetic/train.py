"""Train the embedded default model: a tiny TokenPacker-HD MLLM, from scratch, on synthetic scenes.

    python -m tokenpacker.synthetic.train --out assets/default-model [--steps N] [--seed S]

CLIP-style tower at 336 px / patch 14 (the real 24 x 24 grid and 336 px HD tiles), the TokenPacker
projector at s = 2 (144 tokens per view), a small LLaMA and a sentencepiece tokenizer; HD slice mode with
patch_num 9. Everything is seeded: the same command gives the same checkpoint on the same machine.
Runs on a 2-core CPU in about an hour.
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..configuration import TokenPackerConfig
from ..conversation import SYSTEM_PROMPT, Turn, build_prompt
from ..image_processing import ImageProcessor
from ..modeling import TokenPackerForCausalLM
from ..pipeline import TokenPackerPipeline
from ..tokenizer import LlamaTokenizer
from .scenes import COLORS, COLUMNS, QUESTION_TYPES, ROWS, SHAPES, SPLITS, random_scene, sample_question

TRAIN_SEED = 1234


def tokenizer_corpus() -> list[str]:
    """Lines covering the template and the task's vocabulary."""
    lines = [SYSTEM_PROMPT, "USER: <image>", "ASSISTANT:", "</s>"]
    for shape in SHAPES:
        lines += [f"What color is the {shape}?", f"How many {shape}s are there?"]
        for color in COLORS:
            lines += [f"Is there a {color} {shape}?", f"Where is the {color} {shape}?", f"What shape is the {color} object?"]
    lines += ["How many objects are there?", "yes no", " ".join(str(d) for d in range(10))]
    lines += [f"{r} {c}" for r in ROWS for c in COLUMNS] + ["center"]
    return lines * 3


def default_config(tokenizer: LlamaTokenizer) -> TokenPackerConfig:
    return TokenPackerConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                         initializer_range=0.02, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                           image_size=336, patch_size=14, projection_dim=64),
        scale_factor=2, mm_vision_select_layer=-2, mm_vision_feature_layers=[1, 2, 3, 4], mm_projector_num_heads=4,
        image_aspect_ratio="slice", patch_num=9,
        view_separator_token_id=tokenizer.convert_tokens_to_ids(","),
        row_separator_token_id=tokenizer.convert_tokens_to_ids("\n"),
    )  # fmt: skip


class ExampleMaker:
    """Scene -> one training conversation: views, grid, token ids and the spans of the answers to learn.

    Several questions about one scene go into one multi-turn conversation (as in LLaVA's training data),
    so the vision tower and the long visual prefix are paid once for several answers."""

    def __init__(self, tokenizer: LlamaTokenizer, config: TokenPackerConfig, max_turns: int = 6):
        self.tokenizer = tokenizer
        self.processor = ImageProcessor(config)
        self.max_turns = max_turns
        self.grid = config.raw_grid

    def views_and_labels(self, rng: random.Random, split: dict | None = None):
        scene = random_scene(rng, **(split or SPLITS["standard"]))
        prepared = self.processor(scene.render())
        return prepared.pixel_values, patch_labels(scene, prepared.views, self.grid)

    def __call__(self, rng: random.Random, split: dict):
        scene = random_scene(rng, **split)
        turns = []
        for _ in range(rng.randint(1, self.max_turns)):
            _, question, answer, _ = sample_question(scene, rng, rng.choice(QUESTION_TYPES))
            if all(t.question != question for t in turns):
                turns.append(Turn(question, answer))
        prepared = self.processor(scene.render())
        labels = patch_labels(scene, prepared.views, self.grid)
        ids = self.tokenizer.encode_with_image(build_prompt(turns))
        spans = []
        for i, turn in enumerate(turns):  # each answer (and its </s>) extends the tokens of its prompt
            start = len(self.tokenizer.encode_with_image(build_prompt(turns[:i] + [Turn(turn.question)])))
            end = len(self.tokenizer.encode_with_image(build_prompt(turns[: i + 1])))
            assert ids[:end] == self.tokenizer.encode_with_image(build_prompt(turns[: i + 1])), "prefix mismatch"
            spans.append((start, end))
        return prepared, ids, spans, labels


def patch_labels(scene, views, grid: int, samples: int = 4) -> torch.Tensor:
    """(V, 2, R, R) dense targets for each view's CLIP patches: colour and shape index of the object seen in
    the patch (0 = background). A patch counts an object when any of its samples x samples points hits it."""
    colors, shapes = (np.asarray(m) for m in scene.render_labels())
    out = np.zeros((len(views), 2, grid, grid), dtype=np.int64)
    offsets = (np.arange(samples) + 0.5) / samples
    for view in views:
        step = view.size / grid
        u = (np.arange(grid)[:, None] + offsets[None, :]).reshape(-1) * step  # (R * samples,)
        xs, ys = view.to_image(u, u)
        xi = np.clip(np.floor(xs).astype(int), -1, scene.width)
        yi = np.clip(np.floor(ys).astype(int), -1, scene.height)
        inside_x, inside_y = (xi >= 0) & (xi < scene.width), (yi >= 0) & (yi < scene.height)
        for channel, source in enumerate((colors, shapes)):
            hits = np.zeros((grid * samples, grid * samples), dtype=np.int64)
            ok = inside_y[:, None] & inside_x[None, :]
            hits[ok] = source[np.clip(yi, 0, scene.height - 1)[:, None].repeat(len(xi), 1)[ok],
                              np.clip(xi, 0, scene.width - 1)[None, :].repeat(len(yi), 0)[ok]]  # fmt: skip
            cells = hits.reshape(grid, samples, grid, samples).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
            out[view.index, channel] = cells.max(axis=-1)  # any object beats background (objects never overlap)
    return torch.from_numpy(out)


class PatchHead(torch.nn.Module):
    """Training-only probe: predicts each patch's colour and shape from the multi-level features."""

    def __init__(self, width: int):
        super().__init__()
        self.colors = torch.nn.Linear(width, 1 + len(COLORS))
        self.shapes = torch.nn.Linear(width, 1 + len(SHAPES))

    def loss(self, multi_level: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """multi_level: (V, R*R, L*C); labels: (V, 2, R, R)."""
        colors, shapes = labels.flatten(2).unbind(1)  # (V, R*R) each
        return (F.cross_entropy(self.colors(multi_level).flatten(0, 1).float(), colors.reshape(-1))
                + F.cross_entropy(self.shapes(multi_level).flatten(0, 1).float(), shapes.reshape(-1)))  # fmt: skip


def batch_loss(model: TokenPackerForCausalLM, head: PatchHead, examples) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the answer tokens (and their </s>) of a batch of conversations with different view
    counts, and the patch head's dense loss on the same views."""
    views = torch.cat([prepared.pixel_values for prepared, *_ in examples])
    features, multi_level = model.model.vision_tower(views)
    tokens = model.model.mm_projector(features, multi_level).tokens  # (all views, G*G, H)
    patch_loss = head.loss(multi_level, torch.cat([labels for *_, labels in examples]))
    sequences, targets, offset = [], [], 0
    for prepared, ids, spans, _ in examples:
        count = prepared.pixel_values.shape[0]
        visual = model.embed_visual_sequence(tokens[offset : offset + count], prepared.grid)
        offset += count
        embeds = model.build_inputs_embeds(torch.tensor(ids), visual)[0]
        shift = visual.shape[0] - 1  # the placeholder became len(visual) embeddings
        labels = torch.full((embeds.shape[0],), -100)
        for start, end in spans:
            labels[start + shift : end + shift] = torch.tensor(ids[start:end])
        sequences.append(embeds)
        targets.append(labels)
    length = max(s.shape[0] for s in sequences)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    padded = torch.zeros(len(sequences), length, sequences[0].shape[-1], dtype=sequences[0].dtype)
    labels = torch.full((len(sequences), length), -100)
    for i, (s, t) in enumerate(zip(sequences, targets)):
        padded[i, : len(s)], labels[i, : len(t)], mask[i, : len(s)] = s, t, 1
    logits = model(inputs_embeds=padded, attention_mask=mask).logits.float()
    answer_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    return answer_loss, patch_loss


def pretrain_vision(model: TokenPackerForCausalLM, head: PatchHead, make: "ExampleMaker", rng: random.Random,
                    steps: int, batch_size: int, lr: float, log_every: int) -> None:  # fmt: skip
    """Stage 1: the vision tower learns dense patch features (colour and shape per patch) on single scenes."""
    params = list(model.model.vision_tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    start, history = time.time(), []
    for step in range(steps):
        batch = [make.views_and_labels(rng) for _ in range(batch_size)]
        views = torch.cat([v for v, _ in batch])
        labels = torch.cat([lab for _, lab in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, multi_level = model.model.vision_tower(views)
            loss = head.loss(multi_level, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        optimizer.step()
        history.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"vision step {step + 1}/{steps}  patch loss {np.mean(history[-log_every:]):.4f}  "
                  f"{time.time() - start:.0f}s", flush=True)  # fmt: skip


def train(out: Path, steps: int = 900, vision_steps: int = 300, seed: int = TRAIN_SEED, batch_size: int = 8,
          lr: float = 2e-3, small_share: float = 0.25, patch_weight: float = 0.3,
          log_every: int = 25) -> TokenPackerPipeline:  # fmt: skip
    """Stage 1: `vision_steps` of dense patch pretraining of the tower; stage 2: `steps` of MLLM training
    (answers + the dense patch loss as a regulariser) on multi-turn conversations about scenes."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()
    work = out.parent / (out.name + ".tokenizer")
    tokenizer = LlamaTokenizer.train(tokenizer_corpus(), work, vocab_size=500, hard_vocab_limit=False)
    config = default_config(tokenizer)
    model = TokenPackerForCausalLM(config).train()
    head = PatchHead(config.vision_config.hidden_size * len(config.mm_vision_feature_layers))
    make = ExampleMaker(tokenizer, config)

    pretrain_vision(model, head, make, rng, vision_steps, batch_size=6, lr=lr, log_every=log_every)

    named = list(model.named_parameters()) + [(f"head.{n}", p) for n, p in head.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98))  # fmt: skip
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    stage2, history = time.time(), []
    for step in range(steps):
        split = SPLITS["small"] if rng.random() < small_share else SPLITS["standard"]
        examples = [make(rng, split) for _ in range(batch_size)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            answer_loss, patch_loss = batch_loss(model, head, examples)
        loss = answer_loss + patch_weight * patch_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        schedule.step()
        history.append((answer_loss.item(), patch_loss.item()))
        if (step + 1) % log_every == 0:
            recent = np.mean(history[-log_every:], axis=0)
            print(f"step {step + 1}/{steps}  answer loss {recent[0]:.4f}  patch loss {recent[1]:.4f}  "
                  f"lr {schedule.get_last_lr()[0]:.2e}  {time.time() - stage2:.0f}s", flush=True)  # fmt: skip

    pipeline = TokenPackerPipeline(model.eval(), tokenizer, source=str(out))
    pipeline.save_pretrained(out)
    recent = np.mean(history[-log_every:], axis=0)
    summary = {"seed": seed, "steps": steps, "vision_steps": vision_steps, "batch_size": batch_size, "lr": lr,
               "small_share": small_share, "patch_weight": patch_weight, "torch": torch.__version__,
               "seconds_total": round(time.time() - started), "seconds_stage2": round(time.time() - stage2),
               "final_answer_loss": round(float(recent[0]), 4), "final_patch_loss": round(float(recent[1]), 4)}  # fmt: skip
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return pipeline


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/default-model"))
    parser.add_argument("--steps", type=int, default=900, help="MLLM steps (stage 2)")
    parser.add_argument("--vision-steps", type=int, default=300, help="dense vision pretraining steps (stage 1)")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.vision_steps, args.seed, args.batch_size, args.lr)


if __name__ == "__main__":
    main()
