"""Fine-tuning a generator on document files (body + meta control codes); plain Python, never imports bentoml."""
