"""Stage-1b check (PYTHONPATH=. python experiments/mlp-stage1/stage1b_probe.py STEPS): a fresh projector on run A's tower; does colour reach the point tokens? VARIANT env: base|coloronly|nolnv"""
import os, random, sys, torch
from tokenpacker.loading import load
from tokenpacker.modeling import TokenPackerForCausalLM
from tokenpacker.synthetic import train as T
torch.manual_seed(T.TRAIN_SEED); rng = random.Random(T.TRAIN_SEED)
trained = load("/tmp/run-mlp", device="cpu")
model = TokenPackerForCausalLM(trained.model.config)
model.model.vision_tower.load_state_dict(trained.model.model.vision_tower.state_dict())
model.model.vision_tower.requires_grad_(False)
head = T.TokenHead(model.config.text_config.hidden_size, model.config.scale_factor)
v = os.environ.get("VARIANT", "base")
if v == "coloronly":
    orig = head.loss
    def loss(tokens, labels):
        import torch.nn.functional as F
        x = tokens.flatten(0, 1)
        colors = F.max_pool2d(labels.float(), head.scale).long()[:, 0].reshape(-1)
        w = torch.where(colors > 0, 1.0, 0.2)
        return (F.cross_entropy(head.colors(x).float(), colors, reduction="none") * w).sum() / w.sum()
    head.loss = loss
make = T.ExampleMaker(trained.tokenizer, model.config)
T.pretrain_projector(model, head, make, rng, int(sys.argv[1]), int(os.environ.get("COLOR_STEPS", 200)), batch_size=6, lr=float(os.environ.get("LR", 1e-3)), log_every=50)
