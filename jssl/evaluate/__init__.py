"""Evaluation protocols on frozen or fine-tuned features: kNN, linear probe, fine-tuning."""
