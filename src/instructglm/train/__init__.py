"""Training: the recipe in ``trainer.py``, the loss in ``loss.py``, one module per method in ``methods/``."""
