"""Package data: prompt templates (prompts/*.yaml) and DeepSpeed configs (engines/*.json)."""

from pathlib import Path

TEMPLATES_DIR = Path(__file__).parent
