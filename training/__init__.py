"""Training machinery shared by train.py, finetune.py and evaluate.py."""
