"""Training side: models, datasets, the training loop, evaluation metrics. Never imported by ``edge``."""
