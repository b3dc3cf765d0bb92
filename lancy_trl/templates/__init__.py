"""Package data: prompt templates (prompts/*.yaml) and accelerate / DeepSpeed configs (accelerate/*.yaml)."""

from pathlib import Path

TEMPLATES_DIR = Path(__file__).parent
