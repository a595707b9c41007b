"""Data: sources, tokenization, packing, training formats and synthetic tasks.

| module | what |
|---|---|
| `sources` | JSONL / Parquet / text / saved HF `datasets` records; errors name file, line, field |
| `tokens` | a corpus tokenized once into a memory-mapped token file with document offsets |
| `tokenizer_training` | `train_tokenizer_on_files`: byte-level BPE on text files and folders |
| `formats` | SFT formats (chat, prompt/completion, Alpaca) → token ids + assistant-only labels |
| `packing` | packing without padding: greedy and best-fit decreasing, document boundaries |
| `loader` | endless, deterministic, rank-sharded, exactly resumable pretraining / SFT loaders |
| `tasks` | generated, verifiable data: corpus, chats, arithmetic, Countdown |
"""
