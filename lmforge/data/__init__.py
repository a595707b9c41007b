"""Data: sources, tokenization, packing, training formats and synthetic tasks.

| module | what |
|---|---|
| `readers` | each file type (JSONL, JSON arrays, Parquet, text, HF `datasets`) → raw records and where they are |
| `sources` | records validated against their schema; errors name file, line (column), field; skip-and-count reports |
| `tokens` | a corpus tokenized once into a memory-mapped token file, cached under a fingerprint of its inputs |
| `tokenizer_training` | byte-level BPE on every text field of files and folders; the fingerprint-keyed tokenizer cache |
| `formats` | SFT formats (chat, prompt/completion, Alpaca) through the chat template, or raw → ids + labels |
| `packing` | packing without padding: greedy and best-fit decreasing, document boundaries |
| `loader` | endless, deterministic, rank-sharded, exactly resumable pretraining / SFT loaders |
| `tasks` | generated, verifiable data: corpus, chats, arithmetic, Countdown |
"""
