"""Talking to a run (`lancy chat`): its own prompt, system message and end-of-turn token, outside of training.

    session = Session.load("runs/<run>")
    session.answer("Revenue fell 12% on weak demand.")        # "negative"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lancy_trl.errors import LancyError


@dataclass
class Session:
    model: Any
    tokenizer: Any
    system: str | None = None
    user_template: str | None = None  # the run's instruction around the user's text ("...Sentence: {text}...")
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, model: str, *, raw: bool = False, device: str = "auto", trust_remote_code: bool = False) -> Session:
        """A run (with its system prompt, instruction and thinking setting), a merged export, a GGUF, hub id or
        catalog name; merged weights, eval mode."""
        from lancy_trl import runs
        from lancy_trl.models import load_model, pick_device, resolve_model

        source = resolve_model(model, log=lambda m: None)
        info = runs.read(Path(model)) if source.origin == "run" else {}
        args = SimpleNamespace(precision="auto", attn_implementation="auto", trust_remote_code=trust_remote_code,
                               load_in_4bit=False)
        loaded = load_model(source, args, device=pick_device(device), for_training=False)
        loaded.model.eval()
        session = cls(loaded.model, loaded.tokenizer, chat_kwargs=info.get("chat_template_kwargs") or {},
                      labels=list(info.get("labels") or []))
        if info and not raw:
            session.system, session.user_template = run_prompt(Path(model), info)
        return session

    def messages(self, text: str) -> list[dict[str, str]]:
        user = self.user_template.replace("\x00", text) if self.user_template else text
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": user}]

    def answer(self, text: str, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               streamer: Any = None, remember: bool = False) -> str:
        """The model's reply, greedy unless a temperature is given, stopped at the template's end of turn."""
        import torch

        from lancy_trl.data.template import render, stop_ids

        messages = self.messages(text)
        prompt = render(self.tokenizer, messages, self.chat_kwargs)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self.model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, streamer=streamer,
                                      eos_token_id=stop_ids(self.tokenizer, self.chat_kwargs),
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        reply = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        if remember:
            self.history += [messages[-1], {"role": "assistant", "content": reply}]
        return reply

    def label_probabilities(self, text: str) -> dict[str, float]:
        """Each label word's probability among the labels, scored as `lancy eval --method score` scores."""
        import torch

        from lancy_trl.data.template import encode_prompts, label_token_ids
        from lancy_trl.evaluation.classify import score_batch

        if not self.labels:
            raise LancyError("--labels needs a classification run (its label words are in run.json)")
        messages = self.messages(text)
        prompt_ids = encode_prompts(self.tokenizer, [messages], self.chat_kwargs)
        label_ids = label_token_ids(self.tokenizer, messages, self.labels, self.chat_kwargs)
        with torch.no_grad():
            scores = score_batch(self.model, prompt_ids, label_ids, self.tokenizer.pad_token_id)[0]
        probs = torch.softmax(scores.float(), -1).tolist()
        return dict(zip(self.labels, probs))


def run_prompt(run_dir: Path, info: dict[str, Any]) -> tuple[str | None, str | None]:
    """The system message and the instruction the run was trained with, read from a row it held out: the row's
    user message with its input text replaced by a placeholder (None when the input cannot be found in it)."""
    for split in ("test", "validation"):
        path = run_dir / "data" / f"{split}.jsonl"
        if path.is_file() and path.stat().st_size:
            row = json.loads(path.read_text().splitlines()[0])
            break
    else:
        return info.get("config", {}).get("system_prompt"), None
    prompt = row.get("prompt") or []
    system = next((m["content"] for m in prompt if m["role"] == "system"), None)
    user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    source = row.get("input") or _longest_line(user)
    template = user.replace(source, "\x00", 1) if source and source in user and source != user else None
    return system, template


def _longest_line(text: str) -> str | None:
    """The instruction's input: the longest line, after any `Label:` prefix (`Sentence: ...`)."""
    lines = [line.split(": ", 1)[1] if ": " in line[:20] else line for line in text.splitlines() if line.strip()]
    return max(lines, key=len) if len(lines) > 1 else None
