"""Everything left of the model: sources, validation, tokenization, collation, the DataModule."""
