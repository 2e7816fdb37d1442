"""A Hugging Face Trainer run: a tiny GPT-2 built from a config (no download),
the Trainer's default clip (max_grad_norm=1.0), its own grad_norm logged."""

import json
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

torch.manual_seed(0)
config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
model = GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (64, 16), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


arguments = TrainingArguments(
    output_dir=sys.argv[1],
    max_steps=10,
    per_device_train_batch_size=8,
    learning_rate=1e-3,
    logging_steps=1,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=arguments, train_dataset=Tokens())
trainer.train()
with open(f"{sys.argv[1]}/log_history.json", "w") as handle:
    json.dump(trainer.state.log_history, handle)
