"""Video understanding: online action detection.

    from lmforge.video.oadtr import OadTR, OadTRStream
    stream = OadTRStream(model); logits = stream.push(chunk_feature)

| module | what |
|---|---|
| `oadtr` | OadTR (task-token encoder, future-predicting decoder, joint loss), GRU baseline, streaming, per-frame mAP |
| `runs` | ``lmforge foundations oadtr`` through the Trainer: OadTR vs the GRU baseline, per-frame mAP, checkpoints, resume, metrics.jsonl, curves, report.json |
"""

from lmforge.video.oadtr import GRUDetector, OadTR, OadTRSettings, OadTRStream, frame_map

__all__ = ["GRUDetector", "OadTR", "OadTRSettings", "OadTRStream", "frame_map"]
