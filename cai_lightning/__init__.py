"""Fine-tune GPT-2 to write Python from instructions, on constitution-revised data."""
