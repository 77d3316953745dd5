"""The data stage: read, validate, clean, deduplicate, split, synthesize and tokenize task data.

`edgeft.data.prepare.prepare` is the entry point; each module here does one step."""
