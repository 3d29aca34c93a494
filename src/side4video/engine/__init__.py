"""Training and evaluation engine.

    config.py        TrainConfig (model / data / optim / eval / run) and its resolution
    tasks.py         the Task interface; recognition.py and retrieval.py implement it
    train.py         the training loop (``train(cfg)``)
    evaluate.py      ``evaluate_checkpoint``;  predict.py  classify video files
    optim.py         AdamW groups (one weight-decay rule) and the warm-up + cosine schedule
    checkpoint.py    training checkpoints, export directories, ``load_model``
    distributed.py   torchrun process groups, sharded loaders, collectives

This package imports nothing itself: ``side4video.models`` imports the task modules without pulling
in the training loop.
"""
