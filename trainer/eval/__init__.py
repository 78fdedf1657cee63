"""Evaluation of a pretrained encoder: kNN, linear probe, fine-tuning, the label-efficiency study,
downstream class subsets, plots and the run report; `export` writes the backbone as safetensors.

Entry points: `python -m trainer eval ...` (cli.py) and `python -m trainer export ...` (export.py).
"""
